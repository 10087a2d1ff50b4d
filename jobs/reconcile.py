"""Re-queue, exactly once, every job whose row says pending or running but has no live owner.

A job's message can be lost while its row waits: Redis restarted without persistence, the
broker was flushed, a worker was killed before it acknowledged a job it had not claimed yet.
Nothing would ever run that job again. The reconciler runs when a worker starts (worker_ready)
and every RECONCILE_INTERVAL_SECONDS from Celery beat (`./run` starts it). Each app registers a
function for its own job rows, in `<app>/reconcile.py` imported by its AppConfig.ready(), since
this module, the lowest layer, imports no app:

    register("deep consults", requeue_lost_deep_consults)

First, a message delivered to a worker and unacknowledged for longer than its task's hard time
limit (plus a margin) goes back to its queue: its worker is gone (jobs.broker.restore_orphans).
Then each function gets what the broker holds (`QueuedJobs`) and decides from data whether a row
has a live owner: a claim or heartbeat younger than its lease, or a message for it in a queue or
delivered to a worker. It re-queues the others with `requeue()` after a conditional update that
marks the row (only one reconciler's update matches), and returns the ids it re-queued. A whole
pass also holds a lock in Redis, so two reconcilers never compare the broker with the rows at
the same time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery import Task, current_app, shared_task
from celery.signals import worker_ready
from django.db import connections
from django.utils import timezone
from redis.exceptions import LockError

from jobs.broker import QueuedJobs, queued_jobs, restore_orphans
from jobs.queueing import BROKER_ERRORS

logger = logging.getLogger(__name__)

Reconciler = Callable[[QueuedJobs], list[int]]

# A row that changed this recently may have its message in flight (sent on commit a moment
# ago), so it is never judged lost.
QUIET_SECONDS = 120
# A message unacknowledged this long after its task's hard time limit has a dead worker (a
# live one acknowledges at the limit at the latest); the margin covers start-up and retries'
# countdowns (at most 2 min).
ORPHAN_MARGIN_SECONDS = 300
RECONCILE_SOFT_TIME_LIMIT = 120
RECONCILE_TIME_LIMIT = 150
LOCK_NAME = "jobs:reconcile:lock"

_reconcilers: dict[str, Reconciler] = {}


def register(name: str, reconciler: Reconciler) -> None:
    """Add (or replace) the reconciler of one job kind, e.g. "exports"."""
    _reconcilers[name] = reconciler


def registered() -> dict[str, Reconciler]:
    return dict(_reconcilers)


def quiet_before() -> datetime:
    """Rows last changed before this may be judged: their message had time to arrive."""
    return timezone.now() - timedelta(seconds=QUIET_SECONDS)


def requeue(task: Task, row_id: int) -> bool:
    """Send `task(row_id)` again; False (logged) when the broker refuses it, so the next pass
    tries again."""
    try:
        task.apply_async(args=[row_id], retry=False)
    except BROKER_ERRORS as error:
        logger.warning("could not re-queue %s for %s: %s: %s", task.name, row_id,
                       type(error).__name__, error)
        return False
    logger.warning("re-queued %s for %s: its row had no live owner", task.name, row_id)
    return True


def requeue_runs_by_heartbeat(model: Any, task: Task, queued: QueuedJobs, *,
                              dead_before: datetime, cancelled_message: str) -> list[int]:
    """For run rows that refresh `updated_at` while they work (evaluation, training): a
    running row quiet since `dead_before`, or a pending row with no message in the broker,
    is marked pending by a conditional update (only one reconciler's matches) and queued
    again; one whose cancel was asked while its worker was dead ends as cancelled instead."""
    now = timezone.now()
    status = model.Status
    candidates = model.objects.filter(
        status__in=[status.PENDING, status.RUNNING], updated_at__lt=quiet_before(),
    ).only("pk", "status", "updated_at", "cancel_requested").order_by("pk")
    requeued: list[int] = []
    for run in candidates:
        if run.status == status.RUNNING:
            owner_alive = run.updated_at >= dead_before
        else:
            owner_alive = queued.holds(task.name, run.pk)
        if owner_alive:
            continue
        unchanged = model.objects.filter(pk=run.pk, status=run.status, updated_at=run.updated_at)
        if run.cancel_requested:
            unchanged.update(status=status.CANCELLED, claimed_by="", finished_at=now,
                             error_message=cancelled_message, updated_at=now)
            continue
        marked = unchanged.update(status=status.PENDING, claimed_by="", updated_at=now)
        if marked and requeue(task, run.pk):
            requeued.append(run.pk)
    return requeued


def reconcile_all() -> dict[str, list[int]]:
    """One pass over every registered job kind: {kind: ids re-queued}; {} when another
    reconciler holds the lock."""
    app = current_app
    with app.connection_for_write() as connection:
        # Fail (logged by the caller) rather than wait forever for a Redis that is down.
        connection.ensure_connection(max_retries=2)
        channel: Any = connection.default_channel
        lock = channel.client.lock(LOCK_NAME, timeout=RECONCILE_TIME_LIMIT)
        if not lock.acquire(blocking=False):
            logger.info("another reconciler is running; this pass is skipped")
            return {}
        try:
            time_limits = {name: float(task.time_limit) for name, task in app.tasks.items()
                           if task.time_limit}
            restore_orphans(channel, time_limits, margin=ORPHAN_MARGIN_SECONDS)
            queued = queued_jobs(channel, [queue.name for queue in app.amqp.queues.values()])
            requeued: dict[str, list[int]] = {}
            for name, reconciler in registered().items():
                try:
                    requeued[name] = reconciler(queued)
                except Exception:
                    # One kind failing (a missing table, a bug) must not stop the others.
                    logger.exception("reconciling %s failed", name)
            return requeued
        finally:
            try:
                lock.release()
            except LockError:
                logger.warning("the reconcile pass outlived its lock (%s s)",
                               RECONCILE_TIME_LIMIT)


@shared_task(name="jobs.reconcile", ignore_result=True, acks_late=False,
             soft_time_limit=RECONCILE_SOFT_TIME_LIMIT, time_limit=RECONCILE_TIME_LIMIT)
def reconcile_jobs() -> dict[str, list[int]]:
    return reconcile_all()


@worker_ready.connect
def reconcile_at_worker_start(**kwargs: Any) -> None:
    """A starting worker re-queues what was lost while none ran (in the worker's main
    process)."""
    try:
        reconcile_all()
    except Exception:
        # The worker still starts: beat's next pass tries again.
        logger.exception("reconciling job rows at worker start failed")
    finally:
        connections.close_all()
