"""A job whose message was lost is queued again exactly once; one with a live owner never is.

Each job kind's reconciler is given what the broker holds (`QueuedJobs`): empty when the
message was lost (a Redis restart without persistence), or holding the job's message. The last
tests run the whole pass against the real Redis.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from celery.app.task import Task
from django.contrib.auth.models import User
from django.db.models import Model
from django.utils import timezone

from clinic.models import Consultation
from clinic.reconcile import requeue_lost_deep_consults
from config.celery import app
from evaluation.models import EvalRun
from evaluation.reconcile import requeue_lost_eval_runs
from jobs.broker import QueuedJobs, queued_jobs
from jobs.reconcile import (
    LOCK_NAME,
    ORPHAN_MARGIN_SECONDS,
    reconcile_all,
    reconcile_at_worker_start,
    registered,
)
from retrieval.models import IngestFile, IngestRun
from retrieval.reconcile import requeue_lost_index_builds, requeue_lost_ingest_files
from review.models import ExportBatch
from review.reconcile import requeue_lost_exports
from review.tasks import run_export_batch
from training.models import TrainingRun, TrainingSet
from training.reconcile import requeue_lost_training_runs

pytestmark = pytest.mark.django_db

NOTHING_QUEUED = QueuedJobs()
DEEP, EXPORT, EVAL, TRAIN = ("clinic.tasks.run_deep_consult", "review.tasks.run_export_batch",
                             "evaluation.tasks.run_evaluation", "training.tasks.run_training")
INGEST, BUILD = "retrieval.tasks.ingest_file_task", "retrieval.tasks.build_index_task"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[int]]]:
    """A broker that takes everything: records (task name, args) instead of sending."""
    messages: list[tuple[str, list[int]]] = []

    def apply_async(task: Task, args: list[int], retry: bool) -> None:
        messages.append((task.name, list(args)))

    monkeypatch.setattr(Task, "apply_async", apply_async)
    return messages


def _ago(minutes: float) -> Any:
    return timezone.now() - timedelta(minutes=minutes)


def _age(row: Model, minutes: float = 30, **fields: Any) -> None:
    """Make a row look as if it was last written `minutes` ago (update() skips auto_now)."""
    names = {field.name for field in type(row)._meta.get_fields()}
    stamps = {name: _ago(minutes) for name in ("created_at", "updated_at") if name in names}
    type(row)._default_manager.filter(pk=row.pk).update(**stamps, **fields)


def _holding(task_name: str, row_id: int) -> QueuedJobs:
    return QueuedJobs(frozenset({(task_name, row_id)}))


# --- deep consults ------------------------------------------------------------------------

def _deep_consult(user: User, **fields: Any) -> Consultation:
    consultation = Consultation.objects.create(user=user, question="Apixaban in CKD?",
                                               mode=Consultation.Mode.DEEP)
    _age(consultation, **fields)
    return consultation


def test_a_deep_consult_whose_message_was_lost_is_queued_again_once(
        clinician: User, sent: list[Any]) -> None:
    consultation = _deep_consult(clinician)
    assert requeue_lost_deep_consults(NOTHING_QUEUED) == [consultation.pk]
    # A second reconciler that read the broker before the message arrived finds the row
    # marked (just written), and one after it finds the message.
    assert requeue_lost_deep_consults(NOTHING_QUEUED) == []
    assert requeue_lost_deep_consults(_holding(DEEP, consultation.pk)) == []
    assert sent == [(DEEP, [consultation.pk])]
    consultation.refresh_from_db()
    assert consultation.status == Consultation.Status.PENDING


def test_a_deep_consult_waiting_in_the_queue_is_left_alone(clinician: User,
                                                           sent: list[Any]) -> None:
    consultation = _deep_consult(clinician)
    assert requeue_lost_deep_consults(_holding(DEEP, consultation.pk)) == []
    assert sent == []


def test_a_deep_consult_whose_worker_is_alive_is_not_queued_again_even_without_a_message(
        clinician: User, sent: list[Any]) -> None:
    _deep_consult(clinician, status=Consultation.Status.RUNNING, claimed_by="job-1 w1:42",
                  claimed_at=_ago(1))
    assert requeue_lost_deep_consults(NOTHING_QUEUED) == []
    assert sent == []


def test_a_deep_consult_whose_worker_died_loses_the_claim_and_is_queued_again_once(
        clinician: User, sent: list[Any], settings: Any) -> None:
    # Its message sits unacknowledged with the dead worker, so the broker still "holds" it.
    stale = _ago(settings.DEEP_CONSULT_TIME_LIMIT / 60 + 1)
    consultation = _deep_consult(clinician, status=Consultation.Status.RUNNING,
                                 claimed_by="job-1 w1:42", claimed_at=stale)
    holding = _holding(DEEP, consultation.pk)
    assert requeue_lost_deep_consults(holding) == [consultation.pk]
    assert requeue_lost_deep_consults(NOTHING_QUEUED) == []
    assert sent == [(DEEP, [consultation.pk])]
    consultation.refresh_from_db()
    assert (consultation.claimed_by, consultation.claimed_at) == ("", None)


def test_a_deep_consult_asked_a_moment_ago_is_not_judged(clinician: User,
                                                         sent: list[Any]) -> None:
    consultation = _deep_consult(clinician)
    Consultation.objects.filter(pk=consultation.pk).update(updated_at=timezone.now())
    assert requeue_lost_deep_consults(NOTHING_QUEUED) == []


def test_quick_answers_and_finished_consults_are_not_the_reconcilers_business(
        clinician: User, sent: list[Any]) -> None:
    quick = Consultation.objects.create(user=clinician, question="Q?")
    _age(quick)
    _deep_consult(clinician, status=Consultation.Status.COMPLETE)
    assert requeue_lost_deep_consults(NOTHING_QUEUED) == []


# --- exports ------------------------------------------------------------------------------

def _export(admin: User, **fields: Any) -> ExportBatch:
    batch = ExportBatch.objects.create(format="sft", min_reviews=1, created_by=admin)
    _age(batch, **fields)
    return batch


def test_an_export_whose_message_was_lost_is_queued_again_once(admin_user: User,
                                                               sent: list[Any]) -> None:
    batch = _export(admin_user)
    assert requeue_lost_exports(NOTHING_QUEUED) == [batch.pk]
    assert requeue_lost_exports(_holding(EXPORT, batch.pk)) == []
    assert sent == [(EXPORT, [batch.pk])]


def test_a_running_export_whose_message_is_gone_goes_back_to_pending_and_is_queued(
        admin_user: User, sent: list[Any]) -> None:
    batch = _export(admin_user, status=ExportBatch.Status.RUNNING, progress=40)
    assert requeue_lost_exports(NOTHING_QUEUED) == [batch.pk]
    batch.refresh_from_db()
    assert (batch.status, batch.progress) == (ExportBatch.Status.PENDING, 0)


def test_a_running_export_whose_worker_holds_its_message_is_left_alone(
        admin_user: User, sent: list[Any]) -> None:
    batch = _export(admin_user, status=ExportBatch.Status.RUNNING, progress=40)
    assert requeue_lost_exports(_holding(EXPORT, batch.pk)) == []
    batch.refresh_from_db()
    assert (batch.status, sent) == (ExportBatch.Status.RUNNING, [])


# --- evaluation runs ----------------------------------------------------------------------

def _eval_run(admin: User, **fields: Any) -> EvalRun:
    run = EvalRun.objects.create(suite="pubmedqa", model_name="m", total=4, created_by=admin)
    _age(run, **fields)
    return run


def test_an_evaluation_run_whose_message_was_lost_is_queued_again_once(
        admin_user: User, sent: list[Any]) -> None:
    run = _eval_run(admin_user)
    assert requeue_lost_eval_runs(NOTHING_QUEUED) == [run.pk]
    assert requeue_lost_eval_runs(NOTHING_QUEUED) == []
    assert sent == [(EVAL, [run.pk])]


def test_an_evaluation_run_with_a_fresh_heartbeat_is_not_queued_again(
        admin_user: User, sent: list[Any]) -> None:
    _eval_run(admin_user, minutes=5, status=EvalRun.Status.RUNNING, claimed_by="w1:42")
    assert requeue_lost_eval_runs(NOTHING_QUEUED) == []
    assert sent == []


def test_an_evaluation_run_whose_worker_went_quiet_is_queued_again_once(
        admin_user: User, sent: list[Any]) -> None:
    run = _eval_run(admin_user, minutes=15, status=EvalRun.Status.RUNNING, claimed_by="w1:42")
    assert requeue_lost_eval_runs(_holding(EVAL, run.pk)) == [run.pk]
    assert requeue_lost_eval_runs(NOTHING_QUEUED) == []
    run.refresh_from_db()
    assert (run.status, run.claimed_by) == (EvalRun.Status.PENDING, "")
    assert sent == [(EVAL, [run.pk])]


def test_an_evaluation_cancelled_while_its_worker_was_dead_ends_cancelled(
        admin_user: User, sent: list[Any]) -> None:
    run = _eval_run(admin_user, minutes=15, status=EvalRun.Status.RUNNING,
                    cancel_requested=True)
    assert requeue_lost_eval_runs(NOTHING_QUEUED) == []
    run.refresh_from_db()
    assert run.status == EvalRun.Status.CANCELLED
    assert "Resume" in run.error_message
    assert sent == []


# --- training runs ------------------------------------------------------------------------

def _training_run(**fields: Any) -> TrainingRun:
    training_set = TrainingSet.objects.create(name="set-1", path="/tmp/set-1", card_sha256="0")
    run = TrainingRun.objects.create(training_set=training_set, base_model="/models/base")
    _age(run, **fields)
    return run


def test_a_training_run_whose_message_was_lost_is_queued_again_once(sent: list[Any]) -> None:
    run = _training_run()
    assert requeue_lost_training_runs(NOTHING_QUEUED) == [run.pk]
    assert requeue_lost_training_runs(NOTHING_QUEUED) == []
    assert sent == [(TRAIN, [run.pk])]


def test_a_training_run_in_progress_is_not_queued_again(sent: list[Any]) -> None:
    _training_run(minutes=3, status=TrainingRun.Status.RUNNING, claimed_by="w1:42")
    assert requeue_lost_training_runs(NOTHING_QUEUED) == []
    assert sent == []


def test_a_training_run_whose_worker_died_is_queued_again_once(sent: list[Any],
                                                               settings: Any) -> None:
    run = _training_run(minutes=settings.TRAINING_STALE_SECONDS / 60 + 1,
                        status=TrainingRun.Status.RUNNING, claimed_by="w1:42")
    assert requeue_lost_training_runs(_holding(TRAIN, run.pk)) == [run.pk]
    assert requeue_lost_training_runs(NOTHING_QUEUED) == []
    run.refresh_from_db()
    assert (run.status, run.claimed_by) == (TrainingRun.Status.PENDING, "")


# --- ingest files and index builds --------------------------------------------------------

def _ingest_file(**fields: Any) -> IngestFile:
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING, use_celery=True)
    IngestRun.objects.filter(pk=run.pk).update(created_at=_ago(30))
    ingest_file = IngestFile.objects.create(run=run, path="/data/pubmed26n0001.xml.gz",
                                            format="pubmed")
    IngestFile.objects.filter(pk=ingest_file.pk).update(**fields)
    return ingest_file


def test_an_ingest_file_whose_message_was_lost_is_queued_again_once(sent: list[Any]) -> None:
    ingest_file = _ingest_file()
    assert requeue_lost_ingest_files(NOTHING_QUEUED) == [ingest_file.pk]
    assert requeue_lost_ingest_files(_holding(INGEST, ingest_file.pk)) == []
    assert sent == [(INGEST, [ingest_file.pk])]


def test_an_ingest_file_with_a_live_worker_is_not_queued_again(sent: list[Any]) -> None:
    _ingest_file(status=IngestFile.Status.RUNNING, claim_token="a" * 32,
                 heartbeat_at=timezone.now(), started_at=_ago(30))
    assert requeue_lost_ingest_files(NOTHING_QUEUED) == []
    assert sent == []


def test_an_ingest_file_whose_worker_died_is_taken_from_it_and_queued_again_once(
        sent: list[Any]) -> None:
    ingest_file = _ingest_file(status=IngestFile.Status.RUNNING, claim_token="a" * 32,
                               heartbeat_at=_ago(20), started_at=_ago(30))
    assert requeue_lost_ingest_files(_holding(INGEST, ingest_file.pk)) == [ingest_file.pk]
    assert requeue_lost_ingest_files(_holding(INGEST, ingest_file.pk)) == []
    ingest_file.refresh_from_db()
    assert (ingest_file.status, ingest_file.claim_token) == (IngestFile.Status.PENDING, "")
    assert sent == [(INGEST, [ingest_file.pk])]


def test_an_ingest_file_waiting_for_an_earlier_file_has_no_message_and_is_left_alone(
        sent: list[Any]) -> None:
    _ingest_file(waiting_for="pubmed26n0000.xml.gz")
    assert requeue_lost_ingest_files(NOTHING_QUEUED) == []


def test_an_index_build_whose_message_was_lost_is_queued_again(sent: list[Any]) -> None:
    ingest_file = _ingest_file(status=IngestFile.Status.DONE, finished_at=_ago(10))
    assert requeue_lost_index_builds(NOTHING_QUEUED) == [ingest_file.run_id]
    assert requeue_lost_index_builds(_holding(BUILD, ingest_file.run_id)) == []
    assert sent == [(BUILD, [ingest_file.run_id])]


def test_no_index_build_while_a_file_is_still_open(sent: list[Any]) -> None:
    _ingest_file(status=IngestFile.Status.PENDING)
    assert requeue_lost_index_builds(NOTHING_QUEUED) == []


# --- the whole pass, on the real Redis ----------------------------------------------------

def test_every_job_kind_is_registered() -> None:
    assert set(registered()) == {"deep consults", "exports", "evaluation runs",
                                 "training runs", "ingest files", "waiting ingest files",
                                 "index builds"}


def _clear_broker() -> None:
    with app.connection_for_write() as connection:
        client = connection.default_channel.client
        client.delete("celery", "bulk", "training", "unacked", "unacked_index", LOCK_NAME)


@pytest.fixture
def clean_broker(redis_server: str) -> Any:
    _clear_broker()
    yield
    _clear_broker()


def _broker_view() -> QueuedJobs:
    with app.connection_for_read() as connection:
        return queued_jobs(connection.default_channel, ["celery", "bulk", "training"])


@pytest.mark.redis
def test_two_passes_after_a_lost_message_put_exactly_one_message_in_redis(
        admin_user: User, clean_broker: None) -> None:
    batch = _export(admin_user)
    assert reconcile_all()["exports"] == [batch.pk]
    assert _broker_view().holds(EXPORT, batch.pk)
    assert reconcile_all()["exports"] == []
    with app.connection_for_read() as connection:
        assert connection.default_channel.client.llen("bulk") == 1


@pytest.mark.redis
def test_a_pass_is_skipped_while_another_reconciler_holds_the_lock(
        admin_user: User, clean_broker: None) -> None:
    _export(admin_user)
    with app.connection_for_write() as connection:
        lock = connection.default_channel.client.lock(LOCK_NAME, timeout=30)
        assert lock.acquire(blocking=False)
        try:
            assert reconcile_all() == {}
        finally:
            lock.release()
    assert _broker_view() == QueuedJobs()



def _deliver_to_a_worker(task: Task, row_id: int, *, seconds_ago: float) -> None:
    """What a worker leaves in Redis when it takes a job (acks_late) and is then killed."""
    task.apply_async(args=[row_id], retry=False)
    with app.connection_for_write() as connection:
        client = connection.default_channel.client
        message = json.loads(client.rpop("bulk"))
        delivery = message["properties"]["delivery_info"]
        client.hset("unacked", "tag-1", json.dumps(
            [message, delivery["exchange"], delivery["routing_key"]]))
        client.zadd("unacked_index", {"tag-1": time.time() - seconds_ago})


@pytest.mark.redis
def test_a_job_delivered_to_a_worker_that_died_goes_back_to_its_queue_after_its_time_limit(
        admin_user: User, clean_broker: None) -> None:
    batch = _export(admin_user, status=ExportBatch.Status.RUNNING)
    _deliver_to_a_worker(run_export_batch, batch.pk,
                         seconds_ago=run_export_batch.time_limit + ORPHAN_MARGIN_SECONDS + 1)
    assert reconcile_all()["exports"] == []  # its own message is back: nothing new is sent
    with app.connection_for_read() as connection:
        client = connection.default_channel.client
        assert (client.llen("bulk"), client.hlen("unacked")) == (1, 0)
    assert _broker_view().holds(EXPORT, batch.pk)


@pytest.mark.redis
def test_a_job_its_worker_may_still_be_running_stays_with_that_worker(
        admin_user: User, clean_broker: None) -> None:
    batch = _export(admin_user, status=ExportBatch.Status.RUNNING)
    _deliver_to_a_worker(run_export_batch, batch.pk, seconds_ago=run_export_batch.time_limit)
    assert reconcile_all()["exports"] == []
    with app.connection_for_read() as connection:
        client = connection.default_channel.client
        assert (client.llen("bulk"), client.hlen("unacked")) == (0, 1)
    batch.refresh_from_db()
    assert batch.status == ExportBatch.Status.RUNNING


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_starting_worker_queues_again_what_was_lost_while_none_ran(
        admin_user: User, clean_broker: None) -> None:
    batch = _export(admin_user)
    reconcile_at_worker_start()
    assert _broker_view().holds(EXPORT, batch.pk)
