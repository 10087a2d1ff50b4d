"""Re-queue deep consults whose message was lost or whose worker died (jobs.reconcile).

A deep consult has a live owner while its claim is fresh (every write of the running job
refreshes `claimed_at`; older than `claim_ttl()` means its worker is dead), or, unclaimed, while
its message waits in the broker or is delivered to a worker. The others are re-queued after a
conditional update on `updated_at` that releases any dead claim, so one reconciler wins; the job
then continues from its first unfinished step (and fails with a clear message once
DEEP_CONSULT_MAX_ATTEMPTS attempts are spent).
"""

from __future__ import annotations

from django.utils import timezone

from clinic.deep import claim_ttl
from clinic.models import Consultation
from clinic.tasks import run_deep_consult
from jobs.broker import QueuedJobs
from jobs.reconcile import quiet_before, register, requeue


def requeue_lost_deep_consults(queued: QueuedJobs) -> list[int]:
    now = timezone.now()
    dead_claim_before = now - claim_ttl()
    candidates = Consultation.objects.filter(
        mode=Consultation.Mode.DEEP,
        status__in=[Consultation.Status.PENDING, Consultation.Status.RUNNING],
        updated_at__lt=quiet_before(),
    ).only("pk", "status", "claimed_by", "claimed_at", "updated_at").order_by("pk")
    requeued: list[int] = []
    for consultation in candidates:
        if consultation.claimed_by:
            # Claimed: alive while the claim is fresh, whatever the broker holds (the running
            # job's message may be gone with a Redis restart; the job still finishes).
            owner_alive = (consultation.claimed_at is not None
                           and consultation.claimed_at >= dead_claim_before)
        else:
            owner_alive = queued.holds(run_deep_consult.name, consultation.pk)
        if owner_alive:
            continue
        marked = Consultation.objects.filter(
            pk=consultation.pk, status=consultation.status,
            claimed_by=consultation.claimed_by, updated_at=consultation.updated_at,
        ).update(claimed_by="", claimed_at=None, updated_at=now)
        if marked and requeue(run_deep_consult, consultation.pk):
            requeued.append(consultation.pk)
    return requeued


register("deep consults", requeue_lost_deep_consults)
