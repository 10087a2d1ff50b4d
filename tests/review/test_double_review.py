"""Independent double review of unsafe answers, adjudication, and agreement between reviewers."""

from __future__ import annotations

import pytest

from review.selectors import review_queue, reviewer_agreement
from review.services import (
    ReviewConflict,
    enqueue_for_review,
    review_item_claim,
    review_item_decide,
)


@pytest.fixture
def unsafe_item(answered, feedback_on):
    def make(question="Can I give 10 g of paracetamol?"):
        consultation = answered(question)
        feedback_on(consultation, helpful=False, problems=["unsafe"])
        return enqueue_for_review(consultation_id=consultation.pk)
    return make


def decide(item, user, kind, **extra):
    review_item_claim(item_id=item.pk, reviewer=user)
    return review_item_decide(item_id=item.pk, reviewer=user, kind=kind, **extra)


def test_one_review_of_an_unsafe_item_leaves_it_open_for_someone_else(
        unsafe_item, reviewer, second_reviewer):
    item = unsafe_item()
    decide(item, reviewer, "approve")
    item.refresh_from_db()
    assert item.status == "pending"
    assert list(review_queue(reviewer=reviewer)) == []
    assert list(review_queue(reviewer=second_reviewer)) == [item]
    with pytest.raises(ReviewConflict, match="already reviewed"):
        review_item_claim(item_id=item.pk, reviewer=reviewer)


def test_two_agreeing_reviews_resolve_the_item(unsafe_item, reviewer, second_reviewer):
    item = unsafe_item()
    decide(item, reviewer, "reject", error_categories=["unsafe"])
    decide(item, second_reviewer, "reject", error_categories=["wrong_fact"])
    item.refresh_from_db()
    assert (item.status, item.outcome) == ("done", "reject")
    assert item.error_categories == ["unsafe", "wrong_fact"]


def test_disagreement_goes_to_an_admin_adjudicator(unsafe_item, reviewer, second_reviewer,
                                                   admin_user):
    item = unsafe_item()
    decide(item, reviewer, "approve")
    decide(item, second_reviewer, "reject", error_categories=["unsafe"])
    item.refresh_from_db()
    assert item.status == "adjudication"
    with pytest.raises(ReviewConflict):
        review_item_claim(item_id=item.pk, reviewer=reviewer)
    assert item in list(review_queue(reviewer=admin_user))
    verdict = decide(item, admin_user, "reject", error_categories=["unsafe"])
    item.refresh_from_db()
    assert verdict.is_adjudication
    assert (item.status, item.outcome) == ("done", "reject")
    assert item.decisions.count() == 3


def test_agreement_is_reported_as_cohens_kappa_per_reviewer_pair(
        unsafe_item, reviewer, second_reviewer):
    votes = [("approve", "approve"), ("reject", "reject"), ("approve", "reject"),
             ("reject", "reject")]
    for number, (first, second) in enumerate(votes):
        item = unsafe_item(f"Unsafe question number {number}?")
        extra = {"error_categories": ["unsafe"]}
        decide(item, reviewer, first, **(extra if first == "reject" else {}))
        decide(item, second_reviewer, second, **(extra if second == "reject" else {}))
    [pair] = reviewer_agreement()
    assert pair["reviewers"] == ("rev_carol", "rev_erin")
    assert pair["items"] == 4
    assert pair["agreement"] == 0.75
    # sklearn: p_o = .75, p_e = (2/4 * 1/4) + (2/4 * 3/4) = .5, kappa = .5
    assert pair["kappa"] == 0.5
