"""Celery tasks: a thin interface over the services; they take ids, never question text."""

from __future__ import annotations

import os

from celery import shared_task
from django.conf import settings

from clinic.deep import deep_consult_run, soft_time_limit
from modelsvc.errors import ModelServiceError


@shared_task(
    bind=True,
    name="clinic.tasks.run_deep_consult",
    # Acknowledged only when it ends, and put back if its worker dies, so another worker
    # finishes it; the job claims the row and skips finished steps, so running again is safe.
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    time_limit=settings.DEEP_CONSULT_TIME_LIMIT,
    soft_time_limit=soft_time_limit(settings.DEEP_CONSULT_TIME_LIMIT),
    # deep_consult_run lets only transient model errors out (a permanent one, or one on the
    # last attempt, is stored as the failure), so only those are retried.
    autoretry_for=(ModelServiceError,),
    retry_backoff=5,
    retry_backoff_max=120,
    retry_jitter=True,
    # The job's own limit (DEEP_CONSULT_MAX_ATTEMPTS, counted on the row) stops it first.
    max_retries=settings.DEEP_CONSULT_MAX_ATTEMPTS,
)
def run_deep_consult(self, consultation_id: int) -> str:  # type: ignore[no-untyped-def]
    return deep_consult_run(consultation_id=consultation_id, job_id=self.request.id,
                            worker=f"{self.request.hostname or 'local'}:{os.getpid()}")
