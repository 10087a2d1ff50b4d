"""Writes for evaluation runs started from the dashboard: queue a run, resume a stopped one."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from evaluation import tasks
from evaluation.models import EvalRun
from jobs.queueing import enqueue_after_commit

logger = logging.getLogger(__name__)


def eval_run_enqueue(run: EvalRun) -> None:
    """Queue the run after commit; a broker outage marks it failed, keeping the run."""
    enqueue_after_commit(
        tasks.run_evaluation, run, job=f"evaluation run {run.pk}",
        what_to_do="The run is saved; press Resume when the queue is back (or run "
        f"`python manage.py evaluate --resume {run.pk}`).")


def eval_run_resume(*, run_id: int) -> EvalRun | None:
    """Queue a failed or cancelled run again; answers it already has are kept. None when no
    stopped run has that id."""
    with transaction.atomic():
        updated = EvalRun.objects.filter(
            pk=run_id, status__in=[EvalRun.Status.FAILED, EvalRun.Status.CANCELLED],
        ).update(status=EvalRun.Status.PENDING, error_message="", cancel_requested=False,
                 finished_at=None, updated_at=timezone.now())
        run = EvalRun.objects.filter(pk=run_id).first()
        if not updated or run is None:
            return None
        eval_run_enqueue(run)
    logger.info("eval run %s queued again", run_id)
    return run
