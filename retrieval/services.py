"""Ingestion: files in, articles/chunks/embeddings stored, one index build at the end.

`ingest_paths` is the entry point (the `ingest` command and the launcher call it). Each file
becomes an IngestFile row; with `use_celery` every file is a Celery task and the last one to
finish starts the single index build. Every step is idempotent: an article whose content hash
is unchanged is not touched, a chunk whose text was embedded before is not embedded again,
and an index whose inputs are unchanged is not rebuilt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs.queueing import enqueue_after_commit
from retrieval import embedding, tasks
from retrieval.article_store import OLDER_THAN_DELETION, OLDER_THAN_STORED, Drop, apply_batch
from retrieval.claims import ClaimLost, FileClaim, claim_file, claimable_files
from retrieval.file_order import UNORDERED, blocking_file, file_sequence, wait_reason
from retrieval.index_build import build_index
from retrieval.models import ArticleTombstone, IngestFile, IngestRun
from retrieval.parsers import (
    DeletedCitation,
    ParsedArticle,
    ReadReport,
    UnsupportedInput,
    detect_format,
    read_records,
)
from retrieval.vectors import drafts_text, missing_embeddings, store_embeddings

__all__ = ["IngestError", "Selection", "drafts_text", "finish_run", "ingest_file_by_id",
           "ingest_paths", "release_waiting_files"]

logger = logging.getLogger(__name__)

ARTICLE_BATCH = 256
# One thread per process embeds a batch while the next one is read, chunked and stored, so
# the encoder does not wait on the database (and the database not on the encoder).
_embedding_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-embed")

ProgressCallback = Callable[[IngestFile], None]


class IngestError(Exception):
    """Ingestion cannot start (bad path or format); the message says what to do."""


# --- selection (a first slice of a file) ------------------------------------------------

# The issue key a partial ingest leaves on its IngestFile: the file is not fully read yet, so
# the launcher still queues the whole file for the background.
PARTIAL_INGEST = "outside the selection (partial ingest)"

# Topics a clinician asks about most, as terms matched in the title or MeSH headings
# (lower case, substring). The demo corpus takes a few articles of each.
DEMO_TOPICS: dict[str, tuple[str, ...]] = {
    "diabetes": ("diabetes", "metformin", "insulin", "glycemic", "hba1c", "sglt2", "glp-1"),
    "hypertension": ("hypertension", "blood pressure", "antihypertensive"),
    "asthma and COPD": ("asthma", "pulmonary disease, chronic obstructive", "copd"),
    "heart failure": ("heart failure",),
    "coronary disease and atrial fibrillation": (
        "myocardial infarction", "coronary", "atrial fibrillation", "statin", "anticoagula"),
    "stroke": ("stroke",),
    "depression and anxiety": ("depress", "anxiety", "antidepress"),
    "infections and antibiotics": ("antibiotic", "anti-bacterial", "sepsis", "pneumonia",
                                   "urinary tract infection"),
    "COVID-19": ("covid", "sars-cov-2"),
    "cancer screening": ("cancer screening", "mammograph", "colonoscop",
                         "early detection of cancer", "mass screening"),
    "common cancers": ("breast neoplasms", "lung neoplasms", "colorectal neoplasms",
                       "prostatic neoplasms", "breast cancer", "lung cancer", "colorectal cancer",
                       "prostate cancer"),
    "pregnancy": ("pregnan", "preeclampsia", "pre-eclampsia", "gestational", "postpartum"),
    "obesity": ("obesity", "weight loss", "bariatric"),
    "kidney disease": ("chronic kidney", "renal insufficiency", "dialysis"),
    "pain and opioids": ("opioid", "analgesi", "low back pain", "chronic pain"),
    "dementia": ("dementia", "alzheimer"),
    "vaccination": ("vaccin",),
}


# A topic article is taken when it is about people: MeSH "Humans", or a clinical study type
# (records still in process carry no MeSH yet).
CLINICAL_PUBLICATION_TYPES = frozenset({
    "Randomized Controlled Trial", "Clinical Trial", "Meta-Analysis", "Systematic Review",
    "Observational Study", "Practice Guideline", "Guideline", "Comparative Study",
    "Multicenter Study", "Review", "Controlled Clinical Trial", "Clinical Trial, Phase III",
})


@dataclass
class Selection:
    """Which records of a file to ingest: those whose title or MeSH headings name one of the
    topics, about people, not retracted, English when the record says; at most `limit` in all
    (spread over the topics)."""

    topics: dict[str, tuple[str, ...]]
    limit: int | None = None
    taken: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, topics: str | None, limit: int | None) -> Selection | None:
        """`demo` (the DEMO_TOPICS) or comma-separated terms, each its own topic."""
        if limit is not None and limit < 1:
            raise IngestError(f"The selection limit must be at least 1; got {limit}.")
        if not topics:
            return cls({}, limit) if limit else None
        if topics.strip().lower() == "demo":
            return cls(dict(DEMO_TOPICS), limit)
        terms = [term.strip().lower() for term in topics.split(",") if term.strip()]
        if not terms:
            raise IngestError("No topics given; pass `demo` or comma-separated terms.")
        return cls({term: (term,) for term in terms}, limit)

    @property
    def full(self) -> bool:
        return self.limit is not None and sum(self.taken.values()) >= self.limit

    def take(self, article: ParsedArticle) -> bool:
        """Whether to ingest this record; counts it against its topic when taken."""
        if self.full:
            return False
        if not self.topics:
            self.taken[""] = self.taken.get("", 0) + 1
            return True
        if article.language and article.language != "eng" or article.retracted:
            return False
        if "Humans" not in article.mesh_terms and \
                not CLINICAL_PUBLICATION_TYPES.intersection(article.publication_types):
            return False
        haystack = " ".join([article.title, *article.mesh_terms]).lower()
        per_topic = (math.ceil(self.limit / len(self.topics)) if self.limit is not None
                     else None)
        for topic, terms in self.topics.items():
            if per_topic is not None and self.taken.get(topic, 0) >= per_topic:
                continue
            if any(term in haystack for term in terms):
                self.taken[topic] = self.taken.get(topic, 0) + 1
                return True
        return False


# --- entry point --------------------------------------------------------------------------


def ingest_paths(paths: Iterable[Path | str], *, fmt: str | None = None,
                 collection: str = "pubmed", use_celery: bool = False,
                 progress: ProgressCallback | None = None,
                 selection: Selection | None = None) -> IngestRun:
    """Ingest files and rebuild the index once.

    In-process (default): returns the finished run. With `use_celery`: returns at once, the
    run's status moves on as the worker's tasks finish (one task per file; an NLM update
    file waits for the earlier files, see retrieval.file_order). A `selection`
    (in-process only) ingests a slice of each file; the file stays due for a full ingest.
    """
    resolved = [Path(path).expanduser() for path in paths]
    if not resolved:
        raise IngestError("No input files given; pass one or more PubMed XML, JSONL or "
                          "PubMedQA files.")
    if selection is not None and use_celery:
        raise IngestError("A topic selection or limit is applied in-process only; drop "
                          "--celery, or ingest whole files with the workers.")
    formats: list[str] = []
    for path in resolved:
        if not path.is_file():
            raise IngestError(f"{path} does not exist or is not a file.")
        try:
            formats.append(fmt or detect_format(path))
        except UnsupportedInput as error:
            raise IngestError(str(error)) from error

    with transaction.atomic():
        run = IngestRun.objects.create(collection=collection, use_celery=use_celery,
                                       status=IngestRun.Status.RUNNING)
        files = [IngestFile.objects.create(run=run, path=str(path.resolve()), format=file_fmt,
                                           bytes_total=path.stat().st_size,
                                           sequence=file_sequence(path))
                 for path, file_fmt in zip(resolved, formats, strict=True)]
        # In NLM's file order (the baseline before its updates); other files keep theirs.
        in_order = sorted(files, key=lambda row: row.sequence or UNORDERED)
        if use_celery:
            for ingest_file in in_order:
                ingest_file_enqueue(ingest_file)
    logger.info("ingest run %s: %d file(s), %s", run.pk, len(files),
                "queued for the Celery workers" if use_celery else "in-process")
    if use_celery:
        return run
    for ingest_file in in_order:
        ingest_file_by_id(ingest_file.pk, progress=progress,
                          selection=Selection(selection.topics, selection.limit)
                          if selection is not None else None)
    finish_run(run.pk)
    run.refresh_from_db()
    return run


def ingest_file_enqueue(ingest_file: IngestFile) -> None:
    """Queue one file after commit; if the broker refuses it, the file and its run fail."""
    run_id = ingest_file.run_id

    def fail_run(message: str) -> None:
        # Without this file the run can never finish, so say so on the run too.
        IngestRun.objects.filter(pk=run_id).exclude(status=IngestRun.Status.COMPLETE).update(
            status=IngestRun.Status.FAILED, error=message, finished_at=timezone.now())

    enqueue_after_commit(
        tasks.ingest_file_task, ingest_file, job=f"ingesting {Path(ingest_file.path).name}",
        what_to_do="The run and the files already read are saved; run the same `python "
        "manage.py ingest` again when it is back (unchanged articles are not read twice).",
        error_field="error", on_failure=fail_run)


def build_index_enqueue(run: IngestRun) -> None:
    """Queue the run's index build (a no-op until its last file is in)."""
    enqueue_after_commit(
        tasks.build_index_task, run, job=f"the index build of ingest run {run.pk}",
        what_to_do="The ingested articles are saved; run `python manage.py build_index` when "
        "it is back.", error_field="error")


# --- one file -----------------------------------------------------------------------------


@dataclass
class _FileState:
    ingest_file: IngestFile
    claim: FileClaim
    report: ReadReport
    collection: str
    sequence: int
    seen_pmids: set[str] = field(default_factory=set)
    records_seen: int = 0
    service_skips: int = 0
    pending: list[ParsedArticle] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    progress: ProgressCallback | None = None
    embedding: tuple[list[str], Future[np.ndarray]] | None = None  # hashes, vectors to come


COUNT_FIELDS = ("articles_read", "created", "updated", "unchanged", "deleted", "skipped",
                "chunks_embedded", "bytes_done", "issues")
DELETION_BATCH = 500


def ingest_file_by_id(file_id: int, progress: ProgressCallback | None = None,
                      selection: Selection | None = None, *,
                      in_file_order: bool = False) -> IngestFile | None:
    """Ingest one IngestFile row; a rerun (redelivered task) redoes only what is missing.

    The file is claimed first (retrieval.claims): a delivery that finds it done, or running
    under a live worker, returns without work. With `in_file_order` (the workers) a file
    waits, left pending, while an earlier NLM file is not finished; the file that blocks it
    queues it again when it finishes (`release_waiting_files`).

    With a `selection`, records outside it are skipped and reading stops at its limit; the
    row then carries the PARTIAL_INGEST issue, so the whole file is still due later."""
    ingest_file = IngestFile.objects.select_related("run").filter(pk=file_id).first()
    if ingest_file is None:
        logger.warning("ingest file %s no longer exists; nothing to do", file_id)
        return None
    if in_file_order and ingest_file.status != IngestFile.Status.DONE and \
            _waits_for_earlier_files(ingest_file):
        ingest_file.refresh_from_db()
        return ingest_file
    claim = claim_file(file_id)
    ingest_file.refresh_from_db()
    if claim is None:
        if ingest_file.status == IngestFile.Status.RUNNING:
            logger.info("ingest file %s (%s) is being ingested by another worker; this "
                        "delivery does nothing", file_id, Path(ingest_file.path).name)
        return ingest_file  # done by an earlier delivery, or owned by a live one
    try:
        _ingest_claimed(ingest_file, claim, progress, selection)
    except ClaimLost:
        logger.warning("ingest of %s stopped: another worker took the file over after this "
                       "one went quiet", Path(ingest_file.path).name)
        return ingest_file
    finally:
        release_waiting_files()
    if progress:
        progress(ingest_file)
    return ingest_file


def _waits_for_earlier_files(ingest_file: IngestFile) -> bool:
    """True when the file must wait for another (it is left pending, saying which)."""
    blocker = blocking_file(ingest_file)
    if blocker is None:
        return False
    # Marked first, checked again after: a blocker finishing in between either sees the mark
    # (and queues this file again) or is seen finished here.
    marked = IngestFile.objects.filter(claimable_files(), pk=ingest_file.pk).update(
        status=IngestFile.Status.PENDING, waiting_for=wait_reason(blocker))
    if not marked:
        return True  # a live worker owns it: nothing for this delivery to do
    blocker = blocking_file(ingest_file)
    if blocker is not None:
        logger.info("ingest file %s (%s) waits for %s (earlier in NLM's file order, or the "
                    "same file in another run)", ingest_file.pk, Path(ingest_file.path).name,
                    Path(blocker.path).name)
        return True
    IngestFile.objects.filter(pk=ingest_file.pk, status=IngestFile.Status.PENDING).update(
        waiting_for="")
    return False


def release_waiting_files() -> list[int]:
    """Queue again every waiting file that nothing blocks any more (each exactly once); returns
    their ids. Each file that finishes calls it; the reconciler may too (a blocker whose worker
    died never does), since a conditional update lets only one caller queue a file."""
    released_ids: list[int] = []
    waiting = IngestFile.objects.filter(status=IngestFile.Status.PENDING, run__use_celery=True) \
        .exclude(waiting_for="").order_by("sequence", "pk")
    for ingest_file in waiting:
        if blocking_file(ingest_file) is not None:
            continue
        released = IngestFile.objects.filter(
            pk=ingest_file.pk, status=IngestFile.Status.PENDING,
            waiting_for=ingest_file.waiting_for).update(waiting_for="")
        if released:
            logger.info("ingest file %s (%s) no longer waits; queued", ingest_file.pk,
                        Path(ingest_file.path).name)
            ingest_file_enqueue(ingest_file)
            released_ids.append(ingest_file.pk)
    return released_ids


def _ingest_claimed(ingest_file: IngestFile, claim: FileClaim,
                    progress: ProgressCallback | None, selection: Selection | None) -> None:
    for name in COUNT_FIELDS:
        setattr(ingest_file, name, 0)
    ingest_file.issues, ingest_file.error = {}, ""
    path = Path(ingest_file.path)
    sequence = file_sequence(path)
    state = _FileState(ingest_file, claim, ReadReport(), ingest_file.run.collection,
                       sequence if sequence is not None else UNORDERED, progress=progress)
    try:
        for record in read_records(path, ingest_file.format, state.report):
            claim.beat_if_due()
            if isinstance(record, DeletedCitation):
                _flush(state)
                _delete_articles(state, [record.pmid])
                continue
            state.records_seen += 1
            if record.pmid in state.seen_pmids:
                _skip(state, "duplicate PMID in file")
                continue
            state.seen_pmids.add(record.pmid)
            if not record.sections:
                _skip(state, "no abstract")
                # An update without an abstract replaces a version we could cite: drop it.
                state.drops.append(Drop(record.pmid, ArticleTombstone.Reason.NO_ABSTRACT))
                continue
            if selection is not None and not selection.take(record):
                _skip(state, PARTIAL_INGEST)
                if selection.full:
                    break
                continue
            state.pending.append(record)
            if len(state.pending) + len(state.drops) >= ARTICLE_BATCH:
                _flush(state)
        _flush(state)
        _collect_embeddings(state)
        if selection is not None:
            # Even a slice that skipped nothing stopped early or filtered: mark it partial.
            state.report.issues.setdefault(PARTIAL_INGEST, 0)
        ingest_file.status = IngestFile.Status.DONE
        if not state.records_seen and not state.report.skipped and not ingest_file.deleted \
                and state.report.issues:
            ingest_file.status = IngestFile.Status.FAILED
            ingest_file.error = (f"No records could be read from {path.name}; check that it is "
                                 f"a {ingest_file.format} file (or pass --format).")
    except ClaimLost:
        _abandon_embeddings(state)
        raise
    except UnsupportedInput as error:
        _abandon_embeddings(state)
        ingest_file.status, ingest_file.error = IngestFile.Status.FAILED, str(error)
    except Exception as error:
        _abandon_embeddings(state)
        logger.exception("ingest of %s failed", path.name)
        ingest_file.status = IngestFile.Status.FAILED
        ingest_file.error = f"{type(error).__name__}: {error}"
    _record_report(state)
    ingest_file.finished_at = timezone.now()
    claim.save(status=ingest_file.status, error=ingest_file.error,
               finished_at=ingest_file.finished_at,
               **{name: getattr(ingest_file, name) for name in COUNT_FIELDS})
    logger.info("ingested %s: %d read, %d new, %d updated, %d unchanged, %d deleted, "
                "%d skipped %s", path.name, ingest_file.articles_read, ingest_file.created,
                ingest_file.updated, ingest_file.unchanged, ingest_file.deleted,
                ingest_file.skipped, dict(ingest_file.issues))


def _skip(state: _FileState, reason: str, count: int = 1) -> None:
    state.report.skip(reason, count)
    state.service_skips += count


def _record_report(state: _FileState) -> None:
    """Copy the reader's counts onto the row: records it dropped were read, then skipped."""
    ingest_file = state.ingest_file
    ingest_file.bytes_done = state.report.bytes_done
    ingest_file.issues = dict(sorted(state.report.issues.items()))
    ingest_file.skipped = state.report.skipped
    ingest_file.articles_read = state.records_seen + state.report.skipped - state.service_skips


def _flush(state: _FileState) -> None:
    records, state.pending = state.pending, []
    drops, state.drops = state.drops, []
    if records or drops:
        _apply(state, records, drops)
    _save_progress(state)


def _delete_articles(state: _FileState, pmids: list[str]) -> None:
    """PubMed deleted these PMIDs: their articles go (chunks cascade; search drops their hits
    at once, the run's index build drops their vectors), and the deletion is remembered."""
    unique = list(dict.fromkeys(pmids))
    for start in range(0, len(unique), DELETION_BATCH):
        _apply(state, [], [Drop(pmid, ArticleTombstone.Reason.DELETED)
                           for pmid in unique[start:start + DELETION_BATCH]])


def _apply(state: _FileState, records: list[ParsedArticle], drops: list[Drop]) -> None:
    ingest_file = state.ingest_file
    result = apply_batch(records, drops, sequence=state.sequence,
                         source_file=Path(ingest_file.path).name,
                         collection=state.collection)
    ingest_file.created += result.created
    ingest_file.updated += result.updated
    ingest_file.unchanged += result.unchanged
    ingest_file.deleted += result.deleted
    for reason, count in result.issues.items():
        if reason in (OLDER_THAN_STORED, OLDER_THAN_DELETION):
            _skip(state, reason, count)
        else:
            state.report.issues[reason] += count
    # Embedded after the batch's transaction, so no lock is held while the encoder runs, and
    # in the background: the next batch is read and stored meanwhile.
    _collect_embeddings(state)
    missing = missing_embeddings(result.texts)
    if missing:
        state.embedding = (list(missing), _embedding_thread.submit(
            embedding.embed_texts, list(missing.values())))


def _collect_embeddings(state: _FileState) -> None:
    """Wait for the batch being embedded, if any, and store its vectors."""
    pending, state.embedding = state.embedding, None
    if pending is not None:
        hashes, vectors = pending
        store_embeddings(hashes, vectors.result())
        state.ingest_file.chunks_embedded += len(hashes)


def _abandon_embeddings(state: _FileState) -> None:
    """The file stops on an error: let the batch being embedded finish, unstored (the
    run's index build embeds any chunk left without a vector)."""
    pending, state.embedding = state.embedding, None
    if pending is not None:
        try:
            pending[1].result()
        except Exception:  # the file's own error is the one reported
            logger.debug("embedding abandoned with the file", exc_info=True)


def _save_progress(state: _FileState) -> None:
    _record_report(state)
    ingest_file = state.ingest_file
    state.claim.save(**{name: getattr(ingest_file, name) for name in COUNT_FIELDS})
    if state.progress:
        state.progress(ingest_file)


# --- embeddings ---------------------------------------------------------------------------


# --- end of a run -------------------------------------------------------------------------


def finish_run(run_id: int) -> IngestRun | None:
    """Build the index once every file of the run is finished (exactly one caller wins)."""
    # index_build reuses this module's embedding helpers; imported here so neither module
    # needs the other half-loaded.
    open_files = IngestFile.objects.filter(run_id=run_id).filter(
        Q(status=IngestFile.Status.PENDING) | Q(status=IngestFile.Status.RUNNING))
    if open_files.exists():
        return None
    claimed = IngestRun.objects.filter(pk=run_id, status=IngestRun.Status.RUNNING).update(
        status=IngestRun.Status.INDEXING)
    if claimed != 1:
        return IngestRun.objects.filter(pk=run_id).first()
    run = IngestRun.objects.get(pk=run_id)
    try:
        manifest = build_index()
        run.index_version = manifest["version"]
        failed = run.files.filter(status=IngestFile.Status.FAILED).count()
        run.status = IngestRun.Status.COMPLETE
        run.error = f"{failed} file(s) failed; see their rows" if failed else ""
    except Exception as error:
        logger.exception("index build after ingest run %s failed", run_id)
        run.status = IngestRun.Status.FAILED
        run.error = f"Index build failed ({type(error).__name__}: {error}); the previous " \
            "index stays in use. Fix the cause and run `python manage.py build_index`."
    run.finished_at = timezone.now()
    run.save(update_fields=["index_version", "status", "error", "finished_at"])
    return run
