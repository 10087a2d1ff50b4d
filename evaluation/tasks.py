"""Celery task: a thin interface over the harness; it takes the run id, never the data."""

from __future__ import annotations

import os

from celery import shared_task

from evaluation.harness import execute_run


@shared_task(
    bind=True,
    name="evaluation.tasks.run_evaluation",
    # Redelivered if its worker dies; the run resumes without redoing stored answers.
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # A full suite on a CPU model server takes hours; a run past this is stopped as failed,
    # its answers kept for Resume. Below the broker's visibility timeout (jobs.checks).
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 300,
)
def run_evaluation(self, run_id: int) -> None:  # type: ignore[no-untyped-def]
    execute_run(run_id, worker=f"{self.request.hostname or 'worker'}:{os.getpid()}")
