"""Re-queue evaluation runs whose message was lost or whose worker died (jobs.reconcile).

A running evaluation refreshes `updated_at` with every answer it stores, so a run quiet for
longer than the harness's STALE_AFTER has lost its worker; a pending run is owned by its message,
waiting in the bulk queue or delivered to a worker. A run with neither is marked with a
conditional update (only one reconciler's matches) and queued again; it resumes without redoing
stored answers. One whose cancel was asked while its worker was dead ends as cancelled instead.
"""

from __future__ import annotations

from django.utils import timezone

from evaluation.harness import STALE_AFTER
from evaluation.models import EvalRun
from evaluation.tasks import run_evaluation
from jobs.broker import QueuedJobs
from jobs.reconcile import register, requeue_runs_by_heartbeat

CANCELLED_WITHOUT_WORKER = ("Cancelled. Its worker had stopped, so the run ended here; finished "
                            "questions are kept (press Resume to go on).")


def requeue_lost_eval_runs(queued: QueuedJobs) -> list[int]:
    return requeue_runs_by_heartbeat(
        EvalRun, run_evaluation, queued, dead_before=timezone.now() - STALE_AFTER,
        cancelled_message=CANCELLED_WITHOUT_WORKER)

register("evaluation runs", requeue_lost_eval_runs)
