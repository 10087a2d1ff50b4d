"""Interactive and bulk jobs never share a queue: a deep consult is never stuck behind an ingest.
And no task may outlive the broker's visibility timeout: a system check stops start-up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Task
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from clinic.tasks import run_deep_consult
from config.celery import app
from evaluation.tasks import run_evaluation
from jobs.checks import time_limit_errors, time_limits_fit_the_visibility_timeout
from jobs.reconcile import reconcile_jobs
from retrieval.tasks import build_index_task, ingest_file_task
from review.tasks import run_export_batch
from training.tasks import run_training


def _queue_of(task: Task) -> str:
    return str(app.amqp.router.route({}, task.name)["queue"].name)


def test_a_deep_consult_goes_to_the_interactive_queue() -> None:
    assert _queue_of(run_deep_consult) == "celery"


@pytest.mark.parametrize("task", [ingest_file_task, build_index_task, run_export_batch,
                                  run_evaluation])
def test_bulk_work_goes_to_the_bulk_queue(task: Task) -> None:
    assert _queue_of(task) == "bulk"


def test_training_has_a_queue_of_its_own() -> None:
    assert _queue_of(run_training) == "training"


def test_a_worker_started_without_queues_consumes_all_three() -> None:
    assert {queue.name for queue in app.amqp.queues.values()} == {"celery", "bulk", "training"}


def test_the_reconciler_runs_from_beat_on_the_interactive_queue(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["reconcile-jobs"]
    assert entry["task"] == reconcile_jobs.name
    assert _queue_of(reconcile_jobs) == "celery"


# --- the system check: no task outlives the visibility timeout ---------------------------

def test_with_the_real_settings_every_task_has_a_hard_limit_below_the_visibility_timeout(
) -> None:
    assert time_limits_fit_the_visibility_timeout(None) == []


@pytest.fixture
def visibility_timeout_1000() -> Iterator[None]:
    options = app.conf.broker_transport_options
    app.conf.broker_transport_options = {**options, "visibility_timeout": 1000}
    yield
    app.conf.broker_transport_options = options


def test_start_up_fails_when_a_time_limit_is_above_the_visibility_timeout(
        visibility_timeout_1000: None) -> None:
    with pytest.raises(SystemCheckError) as failure:
        call_command("check")
    message = str(failure.value)
    assert ("review.tasks.run_export_batch: (jobs.E001) The hard time limit of "
            "review.tasks.run_export_batch (1860 s) is not below the broker's visibility "
            "timeout (1000 s)") in message
    assert "Set CELERY_VISIBILITY_TIMEOUT above 1860" in message
    assert "clinic.tasks.run_deep_consult" not in message  # 900 s fits


def test_start_up_fails_when_a_task_has_no_hard_time_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_evaluation, "time_limit", None)
    errors = time_limits_fit_the_visibility_timeout(None)
    assert [(error.id, error.obj) for error in errors] == [
        ("jobs.E002", "evaluation.tasks.run_evaluation")], [error.msg for error in errors]
    assert "has no hard time limit" in errors[0].msg
    assert "Give evaluation.tasks.run_evaluation time_limit=" in str(errors[0].hint)
    assert errors[0].is_serious()


def test_a_global_task_time_limit_counts_for_tasks_without_their_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_evaluation, "time_limit", None)
    assert time_limit_errors([run_evaluation], visibility=600, default_time_limit=300) == []
    assert [e.id for e in time_limit_errors([run_evaluation], visibility=600,
                                            default_time_limit=600)] == ["jobs.E001"]
