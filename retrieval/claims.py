"""An exclusive claim on one ingest file: one worker at a time; a dead one's file is taken over.

A delivery claims its file with one conditional UPDATE (pending or failed -> running, or
running with a stale heartbeat -> running under a new token) and checks that it changed the
row; a second delivery of the same message finds the file running with a fresh heartbeat and
exits without work. The owner writes progress and its heartbeat only through its token, so a
worker that went quiet for longer than INGEST_OWNER_STALE_AFTER and was taken over learns it
at its next write (ClaimLost) and stops, instead of two workers finishing one file.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.utils import timezone

from retrieval.models import INGEST_HEARTBEAT_EVERY, INGEST_OWNER_STALE_AFTER, IngestFile

logger = logging.getLogger(__name__)


class ClaimLost(Exception):
    """Another worker took this file over (our heartbeat went stale); stop without writing."""


@dataclass
class FileClaim:
    file_id: int
    token: str
    beaten_at: float = field(default_factory=time.monotonic)

    def save(self, **fields: Any) -> None:
        """Write `fields` and a fresh heartbeat, while the file is still ours."""
        changed = IngestFile.objects.filter(
            pk=self.file_id, claim_token=self.token, status=IngestFile.Status.RUNNING,
        ).update(heartbeat_at=timezone.now(), **fields)
        if changed != 1:
            raise ClaimLost(f"ingest file {self.file_id} was taken over by another worker")
        self.beaten_at = time.monotonic()

    def beat_if_due(self) -> None:
        if time.monotonic() - self.beaten_at >= INGEST_HEARTBEAT_EVERY.total_seconds():
            self.save()


def claimable_files(now: datetime | None = None) -> Q:
    """Files a delivery may claim: pending, failed (a retry), or running under a dead owner."""
    stale_before = (now or timezone.now()) - INGEST_OWNER_STALE_AFTER
    return (Q(status__in=[IngestFile.Status.PENDING, IngestFile.Status.FAILED])
            | Q(status=IngestFile.Status.RUNNING, heartbeat_at__lt=stale_before)
            | Q(status=IngestFile.Status.RUNNING, heartbeat_at__isnull=True))


def claim_file(file_id: int) -> FileClaim | None:
    """Claim the file for this worker; None when it is done, gone, or owned by a live worker."""
    token = uuid.uuid4().hex
    now = timezone.now()
    previous = IngestFile.objects.filter(pk=file_id).values_list("status", flat=True).first()
    changed = IngestFile.objects.filter(claimable_files(now), pk=file_id).update(
        status=IngestFile.Status.RUNNING, claim_token=token, heartbeat_at=now, started_at=now,
        finished_at=None, waiting_for="")
    if changed != 1:
        return None
    if previous == IngestFile.Status.RUNNING:
        logger.warning("ingest file %s: its worker went quiet for over %s; taken over",
                       file_id, INGEST_OWNER_STALE_AFTER)
    return FileClaim(file_id, token)
