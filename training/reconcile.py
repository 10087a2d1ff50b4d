"""Re-queue training runs whose message was lost or whose worker died (jobs.reconcile).

A running training run refreshes `updated_at` every few seconds, so one quiet for longer than
TRAINING_STALE_SECONDS has lost its worker; a pending run is owned by its message, waiting in
the training queue or delivered to a worker. A run with neither is marked with a conditional
update (only one reconciler's matches) and queued again; it goes on from its latest checkpoint.
One whose cancel was asked while its worker was dead ends as cancelled instead.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from jobs.broker import QueuedJobs
from jobs.reconcile import register, requeue_runs_by_heartbeat
from training.models import TrainingRun
from training.tasks import run_training

CANCELLED_WITHOUT_WORKER = ("Cancelled. Its worker had stopped, so the run ended here; press "
                            "Resume to go on from its latest checkpoint.")


def requeue_lost_training_runs(queued: QueuedJobs) -> list[int]:
    return requeue_runs_by_heartbeat(
        TrainingRun, run_training, queued,
        dead_before=timezone.now() - timedelta(seconds=settings.TRAINING_STALE_SECONDS),
        cancelled_message=CANCELLED_WITHOUT_WORKER)

register("training runs", requeue_lost_training_runs)
