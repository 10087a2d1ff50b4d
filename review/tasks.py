"""Celery tasks for the review app: thin, they take an id and call a service."""

from __future__ import annotations

from celery import shared_task

from review import exports


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=1800, time_limit=1860)
def run_export_batch(batch_id: int) -> None:
    # The export rewrites the same bytes on a rerun, so a redelivered job is harmless.
    exports.run_export_batch(batch_id)
