"""Review decisions and PHI clearances are never deleted, whoever asks: the database refuses a
DELETE on SQLite and PostgreSQL alike, deleting a person or a consultation they belong to fails
whole, and only a flush of the entire database empties their tables."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.db.models import ProtectedError

from clinic.models import Consultation
from review.models import PhiClearance, ReviewDecision, ReviewItem
from review.services import enqueue_for_review, review_item_claim, review_item_decide


@pytest.fixture
def decided(answered, reviewer, admin_user):
    """A reviewed item with one decision and one PHI clearance."""
    def make():
        consultation = answered(supported=(True, False))
        item = enqueue_for_review(consultation_id=consultation.pk)
        review_item_claim(item_id=item.pk, reviewer=reviewer)
        decision = review_item_decide(item_id=item.pk, reviewer=reviewer, kind="approve")
        clearance = PhiClearance.objects.create(item=item, decided_by=admin_user,
                                                decision="exclude", source_sha256="ab" * 32)
        return consultation, decision, clearance
    return make


def refused_delete(table: str, row_id: int) -> None:
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [row_id])


def test_the_database_refuses_to_delete_a_decision_or_a_clearance(decided):
    _, decision, clearance = decided()
    refused_delete("clinic_reviewdecision", decision.pk)
    refused_delete("clinic_phiclearance", clearance.pk)
    assert ReviewDecision.objects.filter(pk=decision.pk).exists()
    assert PhiClearance.objects.filter(pk=clearance.pk).exists()


def test_deleting_the_reviewer_or_the_admin_who_decided_fails_and_deletes_nothing(
        decided, reviewer, admin_user):
    decided()
    for person in (reviewer, admin_user):
        with pytest.raises(ProtectedError):
            person.delete()
    assert User.objects.filter(pk__in=[reviewer.pk, admin_user.pk]).count() == 2
    assert (ReviewDecision.objects.count(), PhiClearance.objects.count()) == (1, 1)


def test_deleting_a_reviewed_consultation_or_its_asker_fails_and_deletes_nothing(decided):
    consultation, _, _ = decided()
    with pytest.raises(ProtectedError):
        consultation.delete()
    with pytest.raises(ProtectedError):
        consultation.user.delete()
    assert Consultation.objects.get(pk=consultation.pk).claims.count() == 2
    assert ReviewItem.objects.filter(consultation=consultation).exists()
    assert (ReviewDecision.objects.count(), PhiClearance.objects.count()) == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_a_flush_empties_the_write_once_tables_and_leaves_them_guarded(decided):
    decided()
    call_command("flush", interactive=False, verbosity=0)
    assert (ReviewDecision.objects.count(), PhiClearance.objects.count()) == (0, 0)

    # Personas and groups went with the flush; the guards did not.
    reviewer = User.objects.create_user(username="rev_after_flush")
    reviewer.groups.add(Group.objects.get_or_create(name="reviewer")[0])
    consultation = Consultation.objects.create(user=reviewer, question="Is it safe?",
                                               status=Consultation.Status.COMPLETE,
                                               answer_text="Yes [1].")
    item = ReviewItem.objects.create(consultation=consultation, priority=3)
    clearance = PhiClearance.objects.create(item=item, decided_by=reviewer, decision="exclude",
                                            source_sha256="cd" * 32)
    refused_delete("clinic_phiclearance", clearance.pk)
