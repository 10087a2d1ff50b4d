"""A served model with history (evaluation runs, promotion decisions, model calls) cannot be
deleted: the history stays, and the admin says why and what to do instead. What a promoted
model serves cannot change, in the database either."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, transaction
from django.db.models import ProtectedError

from evaluation.gate import promote
from evaluation.models import EvalRun, PromotionDecision
from modelsvc.admin import HISTORY_PROTECTS_MESSAGE
from modelsvc.models import ModelCall, ServedModel
from tests.evaluation.factories import make_run


@pytest.fixture
def serving(db: None) -> ServedModel:
    return ServedModel.objects.create(name="base", base_model="smollm2", served_name="base",
                                      capability="literature", status="serving")


@pytest.fixture
def promoted(settings: Any, serving: ServedModel, admin_user: User) -> ServedModel:
    """lora-1 promoted over base through the gate: two runs and one promotion decision."""
    settings.EVAL_GATE_SUITES = ["pubmedqa"]
    candidate = ServedModel.objects.create(name="lora-1", base_model="smollm2",
                                           served_name="lora-1", adapter_path="/adapters/1",
                                           capability="literature")
    make_run(served_model=serving, correct=90, total=100)
    make_run(served_model=candidate, correct=99, total=100)
    promote(candidate, user=admin_user)
    return candidate


def test_deleting_a_model_with_a_promotion_history_fails_and_keeps_the_history(
        promoted: ServedModel, serving: ServedModel) -> None:
    for model in (promoted, serving):  # promoted; and the one it was compared with
        with pytest.raises(ProtectedError):
            model.delete()
    with pytest.raises(ProtectedError):
        ServedModel.objects.all().delete()
    assert ServedModel.objects.count() == 2
    decision = PromotionDecision.objects.get()
    assert (decision.served_model, decision.compared_with) == (promoted, serving)
    assert EvalRun.objects.filter(served_model__in=[promoted, serving]).count() == 2


def test_a_model_that_was_called_cannot_be_deleted(db: None) -> None:
    model = ServedModel.objects.create(name="judge", base_model="smollm2", served_name="judge",
                                       capability="judge")
    call = ModelCall.objects.create(served_model=model, model_name="judge", purpose="verify")
    with pytest.raises(ProtectedError):
        model.delete()
    assert ModelCall.objects.get(pk=call.pk).served_model == model


def test_a_candidate_without_history_can_still_be_deleted(db: None) -> None:
    mistake = ServedModel.objects.create(name="typo", base_model="smollm2", served_name="typo",
                                         capability="literature")
    mistake.delete()
    assert not ServedModel.objects.filter(name="typo").exists()


def test_the_admin_refuses_the_deletion_and_says_what_to_do(
        promoted: ServedModel, client: Any, admin_user: User) -> None:
    client.force_login(admin_user)
    url = f"/admin/modelsvc/servedmodel/{promoted.pk}/delete/"
    page = client.get(url).content.decode()
    assert HISTORY_PROTECTS_MESSAGE in page
    assert "would require deleting the following protected related objects" in page
    client.post(url, {"post": "yes"})
    assert ServedModel.objects.filter(pk=promoted.pk).exists()
    assert PromotionDecision.objects.filter(served_model=promoted).exists()


def test_the_database_refuses_to_change_what_a_promoted_model_serves(
        promoted: ServedModel, serving: ServedModel) -> None:
    for model in (promoted, serving):  # serving and retired
        with pytest.raises(DatabaseError, match="promoted served model cannot change"), \
                transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("UPDATE modelsvc_servedmodel SET adapter_path = %s, cost_per_1k_prompt"
                           " = 5 WHERE id = %s", ["/adapters/quietly-swapped", model.pk])
    # Its status moves on, and a save that writes the same values back is no change.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE modelsvc_servedmodel SET status = 'retired' WHERE id = %s",
                       [promoted.pk])
    promoted.refresh_from_db()
    promoted.save()
    promoted.refresh_from_db()
    assert (promoted.status, promoted.adapter_path, promoted.cost_per_1k_prompt) == (
        "retired", "/adapters/1", 0)


def test_a_candidate_is_still_a_draft_in_the_database(db: None) -> None:
    draft = ServedModel.objects.create(name="lora-2", base_model="smollm2",
                                       served_name="lora-2", capability="literature")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE modelsvc_servedmodel SET adapter_path = '/adapters/2' "
                       "WHERE id = %s", [draft.pk])
    draft.refresh_from_db()
    assert draft.adapter_path == "/adapters/2"
