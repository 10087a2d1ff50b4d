"""Blind double review: a reviewer sees nothing of the round's other decisions until they have
decided; nobody reviews the answer to their own question; kappa counts blind decisions only;
an admin adjudicating sees everything."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from review.models import ReviewDecision, ReviewItem
from review.selectors import review_queue, reviewer_agreement
from review.services import (
    ReviewRefused,
    enqueue_for_review,
    review_item_claim,
    review_item_decide,
)

FIRST_NOTE = "First reviewer: the bleeding risk is understated."
FIRST_CORRECTION = "Aspirin lowers recurrent stroke by a fifth, at a bleeding cost"


@pytest.fixture
def clinician_reviewer(db: None) -> User:
    """A clinician who also reviews: they ask questions and work the queue."""
    user = User.objects.create_user(username="dr_frank", password="dr_frank-pass-123")
    for role in ("clinician", "reviewer"):
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


@pytest.fixture
def unsafe_item(answered, feedback_on):
    """An item flagged unsafe: it needs two independent reviews."""
    def make(question="Can I give 10 g of paracetamol?", user=None):
        consultation = answered(question, user=user)
        feedback_on(consultation, helpful=False, problems=["unsafe"])
        return enqueue_for_review(consultation_id=consultation.pk)
    return make


def first_review_corrected(item, reviewer):
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    from review.services import ClaimEdit

    return review_item_decide(item_id=item.pk, reviewer=reviewer, kind="correct",
                              claims=[ClaimEdit(FIRST_CORRECTION, [1])], note=FIRST_NOTE)


def decide(item, user, kind, **extra):
    review_item_claim(item_id=item.pk, reviewer=user)
    return review_item_decide(item_id=item.pk, reviewer=user, kind=kind, **extra)


def test_the_second_reviewer_sees_no_first_decision_before_deciding(
        client, unsafe_item, reviewer, second_reviewer):
    item = unsafe_item()
    first_review_corrected(item, reviewer)
    client.force_login(second_reviewer)

    page = client.get(reverse("review:item", args=[item.pk])).content.decode()
    assert FIRST_NOTE not in page
    assert FIRST_CORRECTION not in page
    assert "rev_carol" not in page and "Corrected" not in page
    assert "Reviews are blind" in page

    client.post(reverse("review:claim", args=[item.pk]))
    holding = client.get(reverse("review:item", args=[item.pk])).content.decode()
    assert FIRST_NOTE not in holding and FIRST_CORRECTION not in holding
    assert 'id="decision-form"' in holding

    client.post(reverse("review:decide", args=[item.pk]),
                {"kind": "reject", "error_categories": ["unsafe"], "note": "Dangerous dose."})
    after = client.get(reverse("review:item", args=[item.pk])).content.decode()
    assert FIRST_NOTE in after and FIRST_CORRECTION in after
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.NEEDS_ADJUDICATION
    assert list(item.decisions.values_list("reviewer__username", "blind")) == [
        ("rev_carol", True), ("rev_erin", True)]


def test_the_queue_shows_the_second_reviewer_nothing_of_the_first_decision(
        client, unsafe_item, reviewer, second_reviewer):
    item = unsafe_item()
    first_review_corrected(item, reviewer)
    client.force_login(second_reviewer)
    page = client.get(reverse("review:queue")).content.decode()
    assert reverse("review:item", args=[item.pk]) in page
    assert FIRST_NOTE not in page and FIRST_CORRECTION not in page
    assert "rev_carol" not in page


def test_the_first_reviewer_sees_their_own_decision_after_making_it(
        client, unsafe_item, reviewer):
    item = unsafe_item()
    first_review_corrected(item, reviewer)
    client.force_login(reviewer)
    page = client.get(reverse("review:item", args=[item.pk])).content.decode()
    assert FIRST_NOTE in page and "Reviews are blind" not in page


def test_an_admin_adjudicating_sees_every_decision_and_is_not_counted_as_blind(
        client, unsafe_item, reviewer, second_reviewer, admin_user):
    item = unsafe_item()
    first_review_corrected(item, reviewer)
    decide(item, second_reviewer, "reject", error_categories=["unsafe"],
           note="Second reviewer: never give this dose.")
    client.force_login(admin_user)
    page = client.get(reverse("review:item", args=[item.pk])).content.decode()
    assert FIRST_NOTE in page and FIRST_CORRECTION in page
    assert "Second reviewer: never give this dose." in page
    assert "Reviews are blind" not in page

    verdict = decide(item, admin_user, "reject", error_categories=["unsafe"])
    item.refresh_from_db()
    assert (item.status, item.outcome) == ("done", "reject")
    assert verdict.is_adjudication and verdict.blind is False


def test_an_admin_reviewing_a_pending_item_is_blind_like_anyone(
        client, unsafe_item, reviewer, admin_user):
    item = unsafe_item()
    first_review_corrected(item, reviewer)
    client.force_login(admin_user)
    page = client.get(reverse("review:item", args=[item.pk])).content.decode()
    assert FIRST_NOTE not in page and "Reviews are blind" in page


def test_earlier_rounds_stay_visible_when_an_item_is_reopened(
        client, answered, feedback_on, reviewer, second_reviewer):
    consultation = answered("Is a loading dose of aspirin needed?")
    feedback_on(consultation, helpful=False)
    item = enqueue_for_review(consultation_id=consultation.pk)
    decide(item, reviewer, "approve", note="Round one: fine as is.")
    feedback_on(consultation, helpful=False, problems=["unsafe"])
    item = enqueue_for_review(consultation_id=consultation.pk)
    assert (item.status, item.round) == ("pending", 2)
    decide(item, reviewer, "approve", note="Round two: still fine.")
    client.force_login(second_reviewer)
    page = client.get(reverse("review:item", args=[item.pk])).content.decode()
    assert "Round one: fine as is." in page
    assert "Round two: still fine." not in page


def test_the_clinician_who_asked_cannot_claim_or_decide_its_review(
        client, unsafe_item, clinician_reviewer):
    item = unsafe_item(user=clinician_reviewer)
    assert list(review_queue(reviewer=clinician_reviewer)) == []
    with pytest.raises(ReviewRefused, match="You asked this question"):
        review_item_claim(item_id=item.pk, reviewer=clinician_reviewer)

    client.force_login(clinician_reviewer)
    response = client.post(reverse("review:claim", args=[item.pk]), follow=True)
    page = response.content.decode()
    assert "You asked this question, so someone else reviews its answer" in page
    assert "Claim this item" not in page
    assert client.post(reverse("review:claim_next"), follow=True).redirect_chain[-1][0] == \
        reverse("review:queue")

    # Even holding the item (a claim from before the rule, say) is not enough to decide.
    ReviewItem.objects.filter(pk=item.pk).update(claimed_by=clinician_reviewer,
                                                 claim_expires_at=item.created_at.replace(
                                                     year=item.created_at.year + 1))
    with pytest.raises(ReviewRefused):
        review_item_decide(item_id=item.pk, reviewer=clinician_reviewer, kind="approve")
    item.refresh_from_db()
    assert item.status == "pending" and not item.decisions.exists()


def test_an_admin_does_not_adjudicate_their_own_question(
        unsafe_item, reviewer, second_reviewer, admin_user):
    item = unsafe_item(user=admin_user)
    decide(item, reviewer, "approve")
    decide(item, second_reviewer, "reject", error_categories=["unsafe"])
    assert item not in list(review_queue(reviewer=admin_user))
    with pytest.raises(ReviewRefused):
        review_item_claim(item_id=item.pk, reviewer=admin_user)


def test_kappa_counts_only_blind_decisions(unsafe_item, reviewer, second_reviewer):
    blind = unsafe_item("Blind question?")
    decide(blind, reviewer, "approve")
    decide(blind, second_reviewer, "approve")
    # A pair where the second vote was cast after seeing the first (recorded before blind
    # review existed, or not blind): it must not count as agreement.
    seen = unsafe_item("Seen question?")
    for user, flag in ((reviewer, True), (second_reviewer, False)):
        ReviewDecision.objects.create(item=seen, reviewer=user, kind="reject",
                                      error_categories=["unsafe"], blind=flag)
    legacy = unsafe_item("Legacy question?")
    for user in (reviewer, second_reviewer):
        ReviewDecision.objects.create(item=legacy, reviewer=user, kind="reject",
                                      error_categories=["unsafe"])
    [pair] = reviewer_agreement()
    assert pair["items"] == 1
    assert pair["agreement"] == 1.0


def test_a_specialty_correction_stays_hidden_until_the_round_is_over(
        client, unsafe_item, reviewer, second_reviewer):
    item = unsafe_item()
    guessed = item.specialty
    decide(item, reviewer, "approve", specialty="toxicology")
    item.refresh_from_db()
    assert item.specialty == guessed  # not the first reviewer's correction yet
    client.force_login(second_reviewer)
    for page in (client.get(reverse("review:queue")).content.decode(),
                 client.get(reverse("review:item", args=[item.pk])).content.decode()):
        assert "toxicology" not in page

    decide(item, second_reviewer, "approve")
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.DONE
    assert item.specialty == "toxicology"
