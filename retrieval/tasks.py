"""Celery tasks: thin wrappers over the services; they take ids, never question text."""

from __future__ import annotations

import logging

from celery import shared_task

from retrieval import services

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=6 * 3600,
             time_limit=6 * 3600 + 300)
def ingest_file_task(ingest_file_id: int) -> None:
    """Ingest one file of a run (after the earlier NLM files; once, however often it is
    delivered); the run's last file to finish enqueues the index build."""
    ingest_file = services.ingest_file_by_id(ingest_file_id, in_file_order=True)
    if ingest_file is not None:
        services.build_index_enqueue(ingest_file.run)


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=6 * 3600,
             time_limit=6 * 3600 + 300)
def build_index_task(ingest_run_id: int) -> None:
    """Build the index for a run once all its files are in; a no-op for the others."""
    services.finish_run(ingest_run_id)
