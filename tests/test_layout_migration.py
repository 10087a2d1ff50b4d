"""The review and evaluation apps took their models over from `clinic` without moving a row.

A database populated at the previous layout (clinic 0007, modelsvc 0002, no review or
evaluation app) is migrated to the current one; every row is then read back through the new
apps' models.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from clinic.models import Consultation
from evaluation.models import EvalResult, EvalRun, PromotionDecision
from modelsvc.models import ModelCall, ServedModel
from review.models import ExportBatch, PhiClearance, ReviewDecision, ReviewItem

PREVIOUS_LAYOUT = [
    ("clinic", "0007_immutable_records_in_the_database"),
    ("modelsvc", "0002_call_outcome_and_router_version"),
    ("evaluation", None),
    ("review", None),
]


@pytest.fixture
def previous_layout(transactional_db: None) -> Iterator[MigrationExecutor]:
    executor = MigrationExecutor(connection)
    executor.migrate(PREVIOUS_LAYOUT)
    executor.loader.build_graph()
    try:
        yield executor
    finally:
        # Whatever happened, leave the database at the current layout for the next test.
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def test_rows_written_at_the_previous_layout_are_read_intact_by_the_new_apps(
        previous_layout: MigrationExecutor) -> None:
    old = previous_layout.loader.project_state(
        [node for node in PREVIOUS_LAYOUT if node[1]]).apps
    user = old.get_model("auth", "User").objects.create(username="dr_old")
    served = old.get_model("modelsvc", "ServedModel").objects.create(
        name="literature-v1", capability="literature", served_name="lit-v1")
    consultation = old.get_model("clinic", "Consultation").objects.create(
        user=user, question="Does aspirin prevent MI?", status="complete")
    call = old.get_model("modelsvc", "ModelCall").objects.create(
        model_name="lit-v1", purpose="answer", consultation=consultation, prompt_tokens=11)
    item = old.get_model("clinic", "ReviewItem").objects.create(
        consultation=consultation, reason_codes="|sample|", priority=3, model_name="lit-v1")
    decision = old.get_model("clinic", "ReviewDecision").objects.create(
        item=item, reviewer=user, kind="approve", note="fine")
    clearance = old.get_model("clinic", "PhiClearance").objects.create(
        item=item, decided_by=user, decision="release", source_sha256="ab" * 32)
    batch = old.get_model("clinic", "ExportBatch").objects.create(
        format="sft", status="done", sha256="cd" * 32, created_by=user)
    run = old.get_model("clinic", "EvalRun").objects.create(
        suite="pubmedqa", model_name="lit-v1", served_model=served, total=1, done=1)
    result = old.get_model("clinic", "EvalResult").objects.create(
        run=run, item_id="q1", condition="rag", question="q?", outcome="correct")
    promotion = old.get_model("clinic", "PromotionDecision").objects.create(
        served_model=served, decided_by=user, gate_passed=True, promoted=True)
    review_type = ContentType.objects.get_or_create(app_label="clinic", model="reviewitem")[0]

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert Consultation.objects.get(pk=consultation.pk).question == "Does aspirin prevent MI?"
    assert ModelCall.objects.get(pk=call.pk).consultation_id == consultation.pk
    assert ReviewItem.objects.get(pk=item.pk).consultation_id == consultation.pk
    assert ReviewDecision.objects.get(pk=decision.pk).note == "fine"
    assert PhiClearance.objects.get(pk=clearance.pk).item_id == item.pk
    assert ExportBatch.objects.get(pk=batch.pk).sha256 == "cd" * 32
    assert EvalRun.objects.get(pk=run.pk).served_model == ServedModel.objects.get(pk=served.pk)
    assert EvalResult.objects.get(pk=result.pk).run_id == run.pk
    assert PromotionDecision.objects.get(pk=promotion.pk).decided_by == User.objects.get(
        username="dr_old")
    # Admin history and permissions keyed by content type follow the model to its app.
    review_type.refresh_from_db()
    assert (review_type.app_label, review_type.model) == ("review", "reviewitem")
