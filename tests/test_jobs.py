"""Every job kind is queued after commit; with Redis down its row fails with a sentence."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from clinic.models import Consultation
from clinic.services import consultation_create, consultation_retry
from config.celery import app
from evaluation.models import EvalRun
from evaluation.services import eval_run_enqueue
from jobs.queueing import enqueue_after_commit
from retrieval.models import IngestFile, IngestRun
from retrieval.services import build_index_enqueue, ingest_paths
from review.models import ExportBatch
from tests.retrieval.pubmed_xml import ASTHMA, STROKE, document, write

pytestmark = pytest.mark.django_db

OUTAGE = "The job queue (Redis) is not reachable"
Capture = Callable[..., Any]


def _use_broker(url: str) -> None:
    # The producer pool caches its connection; drop it so the new URL takes effect.
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def redis_down(settings: Any) -> Iterator[None]:
    """The real client against a port nothing listens on, so kombu raises what it really does."""
    _use_broker("redis://127.0.0.1:1/0")
    yield
    _use_broker(settings.CELERY_BROKER_URL)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[int]]]:
    """A broker that takes everything: records (task name, args) instead of sending."""
    messages: list[tuple[str, list[int]]] = []
    from celery.app.task import Task

    def apply_async(task: Task, args: list[int], retry: bool) -> None:
        assert retry is False
        messages.append((task.name, list(args)))

    monkeypatch.setattr(Task, "apply_async", apply_async)
    return messages


def _failed_run(admin: User) -> EvalRun:
    return EvalRun.objects.create(suite="pubmedqa", model_name="m", status=EvalRun.Status.FAILED,
                                  error_message="Stopped.", total=4, created_by=admin)


# --- deep consult -------------------------------------------------------------------------

def test_a_deep_consult_is_queued_only_after_its_row_is_committed(
        clinician: User, sent: list[Any], django_capture_on_commit_callbacks: Capture) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        consultation = consultation_create(user=clinician, question="Apixaban in CKD?",
                                           mode=Consultation.Mode.DEEP)
        assert sent == []
    for callback in callbacks:
        callback()
    assert sent == [("clinic.tasks.run_deep_consult", [consultation.pk])]


def test_a_deep_consult_with_redis_down_fails_with_a_sentence_and_no_question_in_the_log(
        clinician: User, redis_down: None, caplog: pytest.LogCaptureFixture,
        django_capture_on_commit_callbacks: Capture) -> None:
    with caplog.at_level(logging.WARNING, logger="jobs.queueing"), \
            django_capture_on_commit_callbacks(execute=True):
        consultation = consultation_create(user=clinician, question="Secret apixaban question?",
                                           mode=Consultation.Mode.DEEP)
    consultation.refresh_from_db()
    assert consultation.status == Consultation.Status.FAILED
    assert consultation.error_message.startswith(f"{OUTAGE}, so the deep consult could not")
    assert "press Retry" in consultation.error_message
    assert consultation.question == "Secret apixaban question?"
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "clinic.tasks.run_deep_consult" in warning[0].getMessage()
    assert "Secret" not in caplog.text


def test_retrying_a_deep_consult_with_redis_still_down_fails_it_again(
        clinician: User, redis_down: None, django_capture_on_commit_callbacks: Capture) -> None:
    consultation = Consultation.objects.create(
        user=clinician, question="Q?", mode=Consultation.Mode.DEEP,
        status=Consultation.Status.FAILED, error_message="earlier")
    with django_capture_on_commit_callbacks(execute=True):
        consultation_retry(consultation=consultation)
    consultation.refresh_from_db()
    assert consultation.status == Consultation.Status.FAILED
    assert OUTAGE in consultation.error_message


# --- export -------------------------------------------------------------------------------

def test_an_export_with_redis_down_fails_and_the_dashboard_offers_retry(
        client: Client, admin_user: User, redis_down: None,
        django_capture_on_commit_callbacks: Capture) -> None:
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("review:export_create"),
                               {"format": "sft", "min_reviews": 1})
    assert response.status_code == 302
    batch = ExportBatch.objects.get()
    assert batch.status == ExportBatch.Status.FAILED
    assert batch.error_message == (f"{OUTAGE}, so export {batch.pk} could not start. The export "
                                   "request is saved; press Retry when the queue is back.")
    page = client.get(reverse("review:dashboard")).content.decode()
    assert OUTAGE in page
    assert reverse("review:export_retry", args=[batch.pk]) in page


def test_retrying_a_failed_export_queues_it_again(
        client: Client, admin_user: User, sent: list[Any],
        django_capture_on_commit_callbacks: Capture) -> None:
    batch = ExportBatch.objects.create(format="sft", min_reviews=1, created_by=admin_user,
                                       status=ExportBatch.Status.FAILED,
                                       error_message=f"{OUTAGE}, ...")
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("review:export_retry", args=[batch.pk]))
    batch.refresh_from_db()
    assert (batch.status, batch.error_message) == (ExportBatch.Status.PENDING, "")
    assert sent == [("review.tasks.run_export_batch", [batch.pk])]


# --- evaluation ---------------------------------------------------------------------------

def test_an_evaluation_run_with_redis_down_fails_instead_of_waiting_forever(
        admin_user: User, redis_down: None, django_capture_on_commit_callbacks: Capture) -> None:
    run = EvalRun.objects.create(suite="pubmedqa", model_name="m", total=4,
                                 created_by=admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        eval_run_enqueue(run)
    run.refresh_from_db()
    assert run.status == EvalRun.Status.FAILED
    assert run.error_message.startswith(f"{OUTAGE}, so evaluation run {run.pk} could not start.")
    assert "press Resume" in run.error_message


def test_the_run_page_shows_the_outage_and_resume_queues_the_run_again(
        client: Client, admin_user: User, sent: list[Any],
        django_capture_on_commit_callbacks: Capture) -> None:
    run = _failed_run(admin_user)
    client.force_login(admin_user)
    page = client.get(reverse("evaluation:run", args=[run.pk])).content.decode()
    assert "Stopped." in page and reverse("evaluation:resume", args=[run.pk]) in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("evaluation:resume", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert (run.status, run.error_message) == (EvalRun.Status.PENDING, "")
    assert sent == [("evaluation.tasks.run_evaluation", [run.pk])]


def test_resume_is_refused_for_a_run_that_is_not_stopped(
        client: Client, admin_user: User, sent: list[Any]) -> None:
    run = _failed_run(admin_user)
    EvalRun.objects.filter(pk=run.pk).update(status=EvalRun.Status.COMPLETE)
    client.force_login(admin_user)
    client.post(reverse("evaluation:resume", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == EvalRun.Status.COMPLETE
    assert sent == []


# --- ingest -------------------------------------------------------------------------------

def test_an_ingest_with_redis_down_fails_its_files_and_its_run(
        tmp_path: Path, redis_down: None, django_capture_on_commit_callbacks: Capture) -> None:
    first = write(tmp_path / "a.xml", document(ASTHMA))
    second = write(tmp_path / "b.xml", document(STROKE))
    with django_capture_on_commit_callbacks(execute=True):
        run = ingest_paths([first, second], use_celery=True)
    run.refresh_from_db()
    assert run.status == IngestRun.Status.FAILED
    assert run.error.startswith(f"{OUTAGE}, so ingesting ")
    assert "python manage.py ingest" in run.error
    files = list(run.files.order_by("pk"))
    assert [f.status for f in files] == [IngestFile.Status.FAILED] * 2
    assert files[1].error.startswith(f"{OUTAGE}, so ingesting b.xml could not start.")


def test_an_index_build_with_redis_down_fails_the_run_with_what_to_run(
        redis_down: None, django_capture_on_commit_callbacks: Capture) -> None:
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING, use_celery=True)
    with django_capture_on_commit_callbacks(execute=True):
        build_index_enqueue(run)
    run.refresh_from_db()
    assert run.status == IngestRun.Status.FAILED
    assert "python manage.py build_index" in run.error


# --- the helper ---------------------------------------------------------------------------

def test_a_row_that_moved_on_meanwhile_is_not_marked_failed(
        redis_down: None, django_capture_on_commit_callbacks: Capture) -> None:
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING, use_celery=True)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        build_index_enqueue(run)
    IngestRun.objects.filter(pk=run.pk).update(status=IngestRun.Status.COMPLETE)
    for callback in callbacks:
        callback()
    run.refresh_from_db()
    assert (run.status, run.error) == (IngestRun.Status.COMPLETE, "")


def test_the_helper_refuses_a_row_without_the_error_field() -> None:
    from retrieval.tasks import build_index_task

    run = IngestRun.objects.create()
    with pytest.raises(ValueError, match="no field 'error_message'"):
        enqueue_after_commit(build_index_task, run, job="x", what_to_do="y")
