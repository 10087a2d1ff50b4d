"""Queue a Celery job once its row is committed, and keep the row honest when Redis is down.

Every job kind (deep consult, ingest, export, evaluation, ...) goes through
`enqueue_after_commit`, so a broker outage always ends the same way: the row is marked failed
with a sentence the person can act on, a WARNING names the job and row (never question text),
and nothing is left pending forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from django.db import models, transaction
from django.utils import timezone
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# What the broker client raises when it cannot take a message. With retry=False kombu wraps
# connection errors in its OperationalError; the others are here for transports that do not.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, RedisError, OSError)


def queue_unavailable_message(job: str, what_to_do: str) -> str:
    """The sentence stored on a row whose job the broker refused."""
    return f"The job queue (Redis) is not reachable, so {job} could not start. {what_to_do}"


def enqueue_after_commit(task: Task, row: models.Model, *, job: str, what_to_do: str,
                         error_field: str = "error_message",
                         on_failure: Callable[[str], Any] | None = None) -> None:
    """Send `task(row.pk)` when the current transaction commits (at once outside one).

    If the broker cannot take it, the row's status becomes its model's `Status.FAILED` and
    `error_field` holds "The job queue (Redis) is not reachable, so {job} could not start.
    {what_to_do}"; `on_failure(message)` may mark related rows too. A row whose status moved
    on meanwhile (another delivery did the work) is left alone.
    """
    model = type(row)
    failed_status = model.Status.FAILED  # type: ignore[attr-defined]
    field_names = {field.name for field in model._meta.get_fields()}
    if error_field not in field_names:
        raise ValueError(f"{model.__name__} has no field {error_field!r} for the error message")
    row_id = row.pk
    status_when_queued = row.status  # type: ignore[attr-defined]

    def send() -> None:
        try:
            task.apply_async(args=[row_id], retry=False)
        except BROKER_ERRORS as error:
            logger.warning("could not queue %s for %s %s: %s: %s", task.name,
                           model._meta.label, row_id, type(error).__name__, error)
            message = queue_unavailable_message(job, what_to_do)
            changes: dict[str, Any] = {"status": failed_status, error_field: message}
            if "updated_at" in field_names:  # update() skips auto_now
                changes["updated_at"] = timezone.now()
            marked = model._default_manager.filter(
                pk=row_id, status=status_when_queued).update(**changes)
            if marked and on_failure is not None:
                on_failure(message)

    transaction.on_commit(send)
