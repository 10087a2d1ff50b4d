"""Celery task: a thin interface over the training service; it takes the run id, never data.

On its own queue (`training`, routed in settings.CELERY_TASK_ROUTES), so hours of training never
hold up a clinician's deep consult or an export: start a worker with
`celery -A config worker -Q training` (./run's bulk worker listens to it too).
"""

from __future__ import annotations

import os

from celery import shared_task

from training import services


@shared_task(
    bind=True,
    name="training.tasks.run_training",
    # Redelivered if its worker dies; the run goes on from its latest checkpoint.
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # Hours on CPU at most; a run past this is stopped, and a resumed run goes on from its
    # latest checkpoint. Below the broker's visibility timeout (jobs.checks).
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 300,
)
def run_training(self, run_id: int) -> None:  # type: ignore[no-untyped-def]
    worker = f"{self.request.hostname or 'worker'}:{os.getpid()}"
    services.execute_training_run(run_id, worker=worker)
