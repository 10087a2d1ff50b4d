"""NLM's file order: update files apply after the baseline and after every earlier update.

MEDLINE files are named `pubmedYYnNNNN.xml.gz`: a year's baseline is numbered from 0001 and
that year's update files continue the numbering, and a new year's baseline supersedes every
file of the years before. So (YY, NNNN) is the order NLM says to apply them in, kept here as
one number, YY * 10000 + NNNN. Files outside that scheme (JSONL, PubMedQA, a PubMed export)
have no place in it.

Two rules use the order. A file queued for the workers waits until every earlier file that is
registered (queued or running) is finished, and until no other worker is ingesting the same
path; the file that finishes re-queues the files that waited on it (`release_waiting_files`).
Then, whatever order files do arrive in (two runs, a redelivery, an in-process ingest beside
the workers), each article keeps the record of the latest file (retrieval.article_store).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from django.db.models import Q

from retrieval.models import IngestFile

logger = logging.getLogger(__name__)

NLM_FILE_NAME = re.compile(r"^pubmed(\d{2})n(\d{4})\.xml(?:\.gz)?$", re.IGNORECASE)
UNORDERED = 0  # Article.source_sequence of a record from a file outside NLM's order


def file_sequence(path: Path | str) -> int | None:
    """pubmed26n1402.xml.gz -> 261402; None for a file outside NLM's naming."""
    match = NLM_FILE_NAME.match(Path(path).name)
    if match is None:
        return None
    return int(match.group(1)) * 10000 + int(match.group(2))


def blocking_file(ingest_file: IngestFile) -> IngestFile | None:
    """The file this one must wait for, or None when it may start now.

    Blocking: the same path being ingested by a live worker, or an earlier NLM file that is
    still to be done by the workers (queued, waiting or running: a dead worker's file is
    re-queued by the reconciler) or being ingested in-process right now. An in-process file
    that is only pending may belong to a process that died; it does not hold the queue up.
    """
    open_files = IngestFile.objects.exclude(pk=ingest_file.pk).filter(
        status__in=[IngestFile.Status.PENDING, IngestFile.Status.RUNNING])
    live = IngestFile.objects.with_live_owner().values("pk")
    blocking = Q(path=ingest_file.path, pk__in=live)
    if ingest_file.sequence is not None:
        blocking |= Q(sequence__lt=ingest_file.sequence) & (Q(run__use_celery=True)
                                                           | Q(pk__in=live))
    return open_files.filter(blocking).order_by("sequence", "pk").first()


def wait_reason(blocker: IngestFile) -> str:
    return f"waiting for {Path(blocker.path).name}"[:300]
