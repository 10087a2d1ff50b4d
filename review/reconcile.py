"""Re-queue exports whose message was lost (jobs.reconcile).

An export row records no worker or heartbeat, so its owner is its message: waiting in the
bulk queue, or delivered to a worker (with acks_late it stays in Redis's unacked set until the
export ends, and Redis hands it to another worker if that one died). A pending or running
export whose message is nowhere in Redis was lost; a running one goes back to pending (the
conditional update only one reconciler wins) and is queued again. A rerun rewrites the same
bytes, so it is harmless.
"""

from __future__ import annotations

from jobs.broker import QueuedJobs
from jobs.reconcile import quiet_before, register, requeue
from review.models import ExportBatch
from review.tasks import run_export_batch


def requeue_lost_exports(queued: QueuedJobs) -> list[int]:
    candidates = ExportBatch.objects.filter(
        status__in=[ExportBatch.Status.PENDING, ExportBatch.Status.RUNNING],
        created_at__lt=quiet_before(),
    ).only("pk", "status").order_by("pk")
    requeued: list[int] = []
    for batch in candidates:
        if queued.holds(run_export_batch.name, batch.pk):
            continue
        # A pending row has no field to mark without a migration; the reconcile lock keeps a
        # second reconciler from comparing it with the broker meanwhile.
        marked = ExportBatch.objects.filter(pk=batch.pk, status=batch.status).update(
            status=ExportBatch.Status.PENDING, progress=0)
        if marked and requeue(run_export_batch, batch.pk):
            requeued.append(batch.pk)
    return requeued


register("exports", requeue_lost_exports)
