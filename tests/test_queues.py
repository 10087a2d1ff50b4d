"""Interactive and bulk jobs never share a queue: a deep consult is never stuck behind an ingest."""

from __future__ import annotations

import pytest
from celery import Task

from clinic.tasks import run_deep_consult
from config.celery import app
from evaluation.tasks import run_evaluation
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
    assert run_training.queue == "training"


def test_a_worker_started_without_queues_consumes_all_three() -> None:
    assert {queue.name for queue in app.amqp.queues.values()} == {"celery", "bulk", "training"}
