"""Re-queue ingest files (and index builds) whose message was lost or whose worker died
(jobs.reconcile).

A running file has a live owner while its heartbeat is fresh (retrieval.claims); a pending file
is owned by its message, waiting in the bulk queue or delivered to a worker, unless it waits for
an earlier NLM file (`waiting_for`), which queues it when it finishes. A running file with a dead
owner goes back to pending with its claim token cleared (the conditional update only one
reconciler wins, and the dead owner's next write fails); a pending file with no message is
queued again. Only runs queued on the workers (`use_celery`) are reconciled: a command ingesting
in-process owns its files itself. A run whose files are all finished but whose index build
message was lost gets that build queued again.
"""

from __future__ import annotations

from django.db.models import Q

from jobs.broker import QueuedJobs
from jobs.reconcile import quiet_before, register, requeue
from retrieval.models import IngestFile, IngestRun
from retrieval.services import release_waiting_files
from retrieval.tasks import build_index_task, ingest_file_task


def requeue_lost_ingest_files(queued: QueuedJobs) -> list[int]:
    quiet = quiet_before()
    candidates = IngestFile.objects.without_live_owner().filter(
        run__use_celery=True, run__created_at__lt=quiet, waiting_for="",
    ).filter(Q(started_at__isnull=True) | Q(started_at__lt=quiet)) \
        .only("pk", "status", "claim_token").order_by("pk")
    requeued: list[int] = []
    for ingest_file in candidates:
        if ingest_file.status == IngestFile.Status.PENDING:
            # A pending row has no field to mark; the reconcile lock keeps a second
            # reconciler from comparing it with the broker meanwhile.
            if queued.holds(ingest_file_task.name, ingest_file.pk):
                continue
        elif not IngestFile.objects.filter(
                pk=ingest_file.pk, status=IngestFile.Status.RUNNING,
                claim_token=ingest_file.claim_token,
        ).update(status=IngestFile.Status.PENDING, claim_token=""):
            continue
        if requeue(ingest_file_task, ingest_file.pk):
            requeued.append(ingest_file.pk)
    return requeued


def requeue_lost_index_builds(queued: QueuedJobs) -> list[int]:
    """Runs still ingesting whose files are all finished: the build message was lost."""
    quiet = quiet_before()
    open_or_recent = Q(status__in=[IngestFile.Status.PENDING, IngestFile.Status.RUNNING]) \
        | Q(finished_at__gte=quiet)
    runs = IngestRun.objects.filter(status=IngestRun.Status.RUNNING, use_celery=True,
                                    created_at__lt=quiet, files__isnull=False) \
        .distinct().exclude(files__in=IngestFile.objects.filter(open_or_recent)).order_by("pk")
    requeued: list[int] = []
    for run in runs:
        if not queued.holds(build_index_task.name, run.pk) and requeue(build_index_task, run.pk):
            requeued.append(run.pk)
    return requeued


def release_waiting_ingest_files(queued: QueuedJobs) -> list[int]:
    """Files waiting for an earlier one whose worker died before releasing them."""
    return release_waiting_files()


register("ingest files", requeue_lost_ingest_files)
register("waiting ingest files", release_waiting_ingest_files)
register("index builds", requeue_lost_index_builds)
