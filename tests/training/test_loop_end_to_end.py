"""The loop on the tiny model, on real Celery workers and the real local model server:
feedback -> review -> export -> train -> evaluate through the product's pipeline -> gate ->
promote -> the next quick answer routed to that capability is served by the new adapter."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from clinic.models import Consultation, Feedback
from evaluation import services as evaluation_services
from evaluation.gate import promote
from evaluation.harness import create_run
from evaluation.models import EvalRun, PromotionDecision
from launcher.processes import free_port, start_model_server, stop_process, wait_for_http
from modelsvc.models import ModelCall, ServedModel
from review.models import ExportBatch
from review.services import (
    ClaimEdit,
    enqueue_for_review,
    export_batch_create,
    review_item_claim,
    review_item_decide,
)
from tests.web.streams import read_stream
from training import services as training_services
from training.models import TrainingRun
from training.serving import served_dir
from training.trainer import Hyperparameters

pytestmark = [pytest.mark.model_server, pytest.mark.redis, pytest.mark.slow,
              pytest.mark.shared_data]

QUESTIONS = {
    "90000001": "Does low-dose aspirin prevent recurrent ischemic stroke?",
    "90000002": "Is metformin at adjusted doses safe in chronic kidney disease stage 3?",
    "90000003": "Does vitamin D alone reduce fractures in older adults?",
    "90000006": "Does early mobilisation after hip fracture surgery shorten hospital stay?",
}


def wait_for(read: Callable[[], Any], done: Callable[[Any], bool], what: str,
             timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = read()
        if done(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not finish within {timeout}s: {value}")


@pytest.fixture
def adapter_server(local_model_dirs: dict[str, Path], tmp_path: Path) -> Iterator[str]:
    """`transformers serve` started the way ./run starts it: unpinned, in TRAINING_SERVED_DIR."""
    folder = local_model_dirs["tiny"]
    port = free_port()
    log_path = tmp_path / "model-server.log"
    saved = {name: getattr(settings, name) for name in
             ("MODEL_BASE_URL", "MODEL_NAME", "MODEL_TOKENIZER")}
    with open(log_path, "wb") as log:
        process = start_model_server(folder, port, log=log, adapters_dir=served_dir())
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", process, 120, "model server")
            settings.MODEL_BASE_URL = f"http://127.0.0.1:{port}/v1"
            settings.MODEL_NAME = str(folder)
            settings.MODEL_TOKENIZER = str(folder)
            yield str(log_path)
        finally:
            stop_process(process)
            for name, value in saved.items():
                setattr(settings, name, value)


def test_feedback_becomes_an_adapter_that_answers_the_next_question(
        transactional_db: None, tiny_index: Path, adapter_server: str, start_worker: Any,
        local_model_dirs: dict[str, Path], clinician: User, reviewer: User, admin_user: User,
        client: Client, tmp_path: Path, settings: Any) -> None:
    started = time.monotonic()
    settings.EVAL_GATE_SUITES = ["pubmedqa"]
    settings.EVAL_GATE_MIN_ITEMS = 4
    # Both tiny models answer noise; a margin of 100 points lets the gate, not an override,
    # decide on four questions. The gate's arithmetic has its own tests.
    settings.EVAL_GATE_MARGIN = 0.5
    settings.EVAL_MAX_TOKENS = 12
    env = {"TRAINING_DIR": str(settings.TRAINING_DIR), "EXPORT_EVAL_PERCENT": "0",
           "LITERATURE_DATA_DIR": str(settings.LITERATURE_DATA_DIR), "EVAL_MAX_TOKENS": "12",
           "EVAL_CONCURRENCY": "1"}
    start_worker("default", **env)
    start_worker("trainer", queues="training", **env)
    tiny = local_model_dirs["tiny"]
    base = ServedModel.objects.create(name="tiny-base", served_name=str(tiny),
                                      base_model=str(tiny), capability="literature",
                                      status=ServedModel.Status.SERVING)

    # Feedback -> review: clinicians' answers, thumbs down, corrected by a reviewer.
    for pmid, question in list(QUESTIONS.items())[:3]:
        consultation = Consultation.objects.create(
            user=clinician, question=f"In my patients: {question.lower()}",
            status=Consultation.Status.COMPLETE, answer_text="No [1].",
            prompt_version="answer-v1", routed_model_name=str(tiny))
        consultation.passages.create(rank=1, pmid=pmid, title="t", text="Passage text.",
                                     score=1.0)
        Feedback.objects.create(consultation=consultation, user=clinician, helpful=False)
        item = enqueue_for_review(consultation_id=consultation.pk)
        review_item_claim(item_id=item.pk, reviewer=reviewer)
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind="correct",
                           claims=[ClaimEdit(f"The trial of PMID {pmid} answers yes.", [1])],
                           error_categories=["wrong_fact"])

    # -> export, on a real worker.
    batch = export_batch_create(fmt="sft", since=None, min_reviews=1, created_by=admin_user)
    batch = wait_for(lambda: ExportBatch.objects.get(pk=batch.pk),
                     lambda b: b.status in ("done", "failed"), "the export")
    assert batch.status == "done", batch.error_message

    # -> train, on the worker of the training queue.
    training_set = training_services.training_set_create(name="loop", export_batch_id=batch.pk)
    assert training_set.sft_records == 3
    run = training_services.training_run_create(
        training_set=training_set, base_model=tiny,
        hyperparameters=Hyperparameters(max_steps=3, batch_size=1, logging_steps=1,
                                        max_length=512), created_by=admin_user)
    training_services.training_run_enqueue(run)
    run = wait_for(lambda: TrainingRun.objects.get(pk=run.pk), lambda r: r.is_finished,
                   "the training run")
    assert run.status == TrainingRun.Status.COMPLETE, run.error_message
    candidate = run.served_model
    assert candidate.status == ServedModel.Status.CANDIDATE

    # -> evaluate both through the product's pipeline, on the worker.
    data = tmp_path / "pubmedqa.json"
    data.write_text(json.dumps({pmid: {"QUESTION": question, "final_decision": "yes"}
                                for pmid, question in QUESTIONS.items()}))
    runs = []
    for model in (candidate.name, base.name):
        eval_run = create_run(suite_name="pubmedqa", model=model, data_paths=[data],
                              created_by=admin_user)
        evaluation_services.eval_run_enqueue(eval_run)
        runs.append(eval_run)
    for eval_run in runs:
        finished = wait_for(lambda r=eval_run: EvalRun.objects.get(pk=r.pk),
                            lambda r: r.is_finished, "an evaluation run")
        assert finished.status == "complete", finished.error_message
    answered = list(EvalRun.objects.get(pk=runs[0].pk).results.values_list("outcome", "error"))
    assert len(answered) == 4 and all(outcome != "error" for outcome, _ in answered), answered

    # -> gate -> promote.
    decision = promote(candidate, user=admin_user)
    assert decision.promoted and decision.gate_passed and not decision.overridden
    candidate.refresh_from_db()
    base.refresh_from_db()
    assert candidate.status == "serving" and base.status == "retired"

    # -> the next quick answer routed to literature is served by the adapter.
    client.force_login(clinician)
    response = client.post("/", {"question": "Does aspirin prevent a second stroke?",
                                 "quick": "1"})
    assert response.status_code == 302
    consultation = Consultation.objects.latest("id")
    read_stream(client.get(f"/consultations/{consultation.pk}/events"))
    consultation.refresh_from_db()
    assert consultation.status == "complete", consultation.error_message
    assert consultation.routed_model_name == candidate.served_name
    call = ModelCall.objects.filter(consultation_id=consultation.pk).latest("id")
    assert call.succeeded and call.model_name == candidate.served_name
    assert call.served_model_id == candidate.pk
    # The server loaded the adapter's merged weights under its served name.
    assert f"Loading {candidate.served_name}" in Path(adapter_server).read_text()

    # Lineage on the models page: what trained it, which runs evaluated it, who promoted it.
    client.force_login(admin_user)
    page = client.get("/evaluation/models/").content.decode()
    lineage = page[page.index('id="lineage"'):]
    assert f"training run {run.pk}" in lineage and f"batch #{batch.pk}" in lineage
    assert f"run {runs[0].pk}</a> pubmedqa" in lineage
    assert admin_user.username in lineage
    assert PromotionDecision.objects.filter(served_model=candidate, promoted=True).exists()
    assert time.monotonic() - started < 300
