"""Claiming items, each kind of decision, and the immutable record every decision leaves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from review.models import ReviewDecision, ReviewItem
from review.services import (
    ClaimEdit,
    ReviewConflict,
    ReviewError,
    enqueue_for_review,
    review_item_claim,
    review_item_decide,
)


@pytest.fixture
def item(answered):
    return enqueue_for_review(consultation_id=answered(supported=(True, False)).pk)


def test_a_reviewer_claims_an_item_for_a_limited_time(item, reviewer):
    claimed = review_item_claim(item_id=item.pk, reviewer=reviewer)
    assert claimed.claimed_by == reviewer
    assert timedelta(minutes=29) < claimed.claim_expires_at - timezone.now() <= timedelta(
        minutes=30)


def test_a_second_reviewer_cannot_claim_a_held_item(item, reviewer, second_reviewer):
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    with pytest.raises(ReviewConflict):
        review_item_claim(item_id=item.pk, reviewer=second_reviewer)
    item.refresh_from_db()
    assert item.claimed_by == reviewer


def test_an_expired_claim_can_be_taken_over(item, reviewer, second_reviewer):
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    ReviewItem.objects.filter(pk=item.pk).update(
        claim_expires_at=timezone.now() - timedelta(seconds=1))
    review_item_claim(item_id=item.pk, reviewer=second_reviewer)
    with pytest.raises(ReviewConflict):
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind="approve")
    assert not ReviewDecision.objects.exists()


def test_deciding_without_a_claim_is_refused(item, reviewer):
    with pytest.raises(ReviewConflict):
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind="approve")


def test_a_clinician_cannot_claim(item, clinician):
    with pytest.raises(ReviewError):
        review_item_claim(item_id=item.pk, reviewer=clinician)


def test_approving_keeps_the_answer_and_records_who_when_and_what(item, reviewer):
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    decision = review_item_decide(item_id=item.pk, reviewer=reviewer, kind="approve",
                                  note="Fine.")
    item.refresh_from_db()
    assert (item.status, item.outcome, item.claimed_by) == ("done", "approve", None)
    assert item.final_answer_text == item.consultation.answer_text
    assert decision.reviewer == reviewer and decision.created_at is not None
    assert decision.before == decision.after
    assert decision.before["claims"][1]["citations"] == [2]


def test_correcting_edits_claims_and_citations_and_keeps_before_and_after(item, reviewer):
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    decision = review_item_decide(
        item_id=item.pk, reviewer=reviewer, kind="correct",
        claims=[ClaimEdit("Aspirin lowers recurrent ischemic stroke by 22%.", [1]),
                ClaimEdit("", [2]),
                ClaimEdit("It modestly increases major bleeding.", [1])],
        error_categories=["wrong_fact"])
    item.refresh_from_db()
    assert item.outcome == "correct"
    assert item.final_answer_text == ("Aspirin lowers recurrent ischemic stroke by 22% [1]. "
                                      "It modestly increases major bleeding [1].")
    assert [c["citations"] for c in item.final_claims] == [[1], [1]]
    assert decision.before["answer_text"] == item.consultation.answer_text
    assert decision.after["answer_text"] == item.final_answer_text


def test_a_correction_citing_a_passage_that_was_not_shown_is_refused(item, reviewer):
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    with pytest.raises(ReviewError, match="do not match any passage"):
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind="correct",
                           claims=[ClaimEdit("Aspirin works.", [7])])
    assert not ReviewDecision.objects.exists()


def test_rejecting_needs_an_error_category(item, reviewer):
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    with pytest.raises(ReviewError, match="error category"):
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind="reject")
    review_item_decide(item_id=item.pk, reviewer=reviewer, kind="reject",
                       error_categories=["outdated", "wrong_citation"])
    item.refresh_from_db()
    assert (item.outcome, item.error_categories) == ("reject", ["outdated", "wrong_citation"])


def test_escalating_sends_the_item_to_an_admin_who_decides_finally(item, reviewer, admin_user):
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    review_item_decide(item_id=item.pk, reviewer=reviewer, kind="escalate", note="Unsure.")
    item.refresh_from_db()
    assert item.status == "escalated"
    with pytest.raises(ReviewConflict):
        review_item_claim(item_id=item.pk, reviewer=reviewer)
    review_item_claim(item_id=item.pk, reviewer=admin_user)
    final = review_item_decide(item_id=item.pk, reviewer=admin_user, kind="reject",
                               error_categories=["unsafe"])
    item.refresh_from_db()
    assert final.is_adjudication
    assert (item.status, item.outcome) == ("done", "reject")


def test_decisions_cannot_be_changed_or_deleted(item, reviewer):
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    decision = review_item_decide(item_id=item.pk, reviewer=reviewer, kind="approve")
    decision.kind = "reject"
    with pytest.raises(TypeError):
        decision.save()
    with pytest.raises(TypeError):
        decision.delete()
    with pytest.raises(TypeError):
        ReviewDecision.objects.filter(pk=decision.pk).update(kind="reject")
    with pytest.raises(TypeError):
        ReviewDecision.objects.all().delete()
    assert ReviewDecision.objects.get(pk=decision.pk).kind == "approve"



def test_the_database_itself_refuses_to_change_a_decision(item, reviewer):
    from django.db import DatabaseError, connection, transaction

    review_item_claim(item_id=item.pk, reviewer=reviewer)
    decision = review_item_decide(item_id=item.pk, reviewer=reviewer, kind="approve")
    for statement in ("UPDATE clinic_reviewdecision SET kind = 'reject' WHERE id = %s",
                      "DELETE FROM clinic_reviewdecision WHERE id = %s"):
        with pytest.raises(DatabaseError, match="immutable"), transaction.atomic(), \
                connection.cursor() as cursor:
            cursor.execute(statement, [decision.pk])
    assert ReviewDecision.objects.get(pk=decision.pk).kind == "approve"
