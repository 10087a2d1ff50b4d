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
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs.queueing import enqueue_after_commit
from retrieval import embedding, tasks
from retrieval.chunking import CHUNKER_VERSION, chunk_article, content_hash
from retrieval.index_build import build_index
from retrieval.models import Article, Chunk, IngestFile, IngestRun
from retrieval.parsers import (
    DeletedCitation,
    ParsedArticle,
    ReadReport,
    UnsupportedInput,
    detect_format,
    read_records,
)
from retrieval.vectors import drafts_text, ensure_embeddings

logger = logging.getLogger(__name__)

ARTICLE_BATCH = 256

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
    run's status moves on as the worker's tasks finish (one task per file). A `selection`
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
                                           bytes_total=path.stat().st_size)
                 for path, file_fmt in zip(resolved, formats, strict=True)]
        if use_celery:
            for ingest_file in files:
                ingest_file_enqueue(ingest_file)
    logger.info("ingest run %s: %d file(s), %s", run.pk, len(files),
                "queued for the Celery workers" if use_celery else "in-process")
    if use_celery:
        return run
    for ingest_file in files:
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
    report: ReadReport
    collection: str
    seen_pmids: set[str] = field(default_factory=set)
    records_seen: int = 0
    service_skips: int = 0
    pending: list[ParsedArticle] = field(default_factory=list)
    progress: ProgressCallback | None = None


def ingest_file_by_id(file_id: int, progress: ProgressCallback | None = None,
                      selection: Selection | None = None) -> IngestFile | None:
    """Ingest one IngestFile row; a rerun (redelivered task) redoes only what is missing.

    With a `selection`, records outside it are skipped and reading stops at its limit; the
    row then carries the PARTIAL_INGEST issue, so the whole file is still due later."""
    claimed = IngestFile.objects.filter(pk=file_id).exclude(
        status=IngestFile.Status.DONE).update(status=IngestFile.Status.RUNNING,
                                              started_at=timezone.now())
    ingest_file = IngestFile.objects.select_related("run").filter(pk=file_id).first()
    if ingest_file is None:
        logger.warning("ingest file %s no longer exists; nothing to do", file_id)
        return None
    if not claimed:
        return ingest_file  # already done by an earlier delivery
    for name in ("articles_read", "created", "updated", "unchanged", "deleted", "skipped",
                 "chunks_embedded", "bytes_done"):
        setattr(ingest_file, name, 0)
    ingest_file.issues, ingest_file.error = {}, ""
    state = _FileState(ingest_file, ReadReport(), ingest_file.run.collection, progress=progress)
    path = Path(ingest_file.path)
    try:
        for record in read_records(path, ingest_file.format, state.report):
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
                _delete_articles(state, [record.pmid], note_missing=False)
                continue
            if selection is not None and not selection.take(record):
                _skip(state, PARTIAL_INGEST)
                if selection.full:
                    break
                continue
            state.pending.append(record)
            if len(state.pending) >= ARTICLE_BATCH:
                _flush(state)
        _flush(state)
        if selection is not None:
            # Even a slice that skipped nothing stopped early or filtered: mark it partial.
            state.report.issues.setdefault(PARTIAL_INGEST, 0)
        ingest_file.status = IngestFile.Status.DONE
        if not state.records_seen and not state.report.skipped and not ingest_file.deleted \
                and state.report.issues:
            ingest_file.status = IngestFile.Status.FAILED
            ingest_file.error = (f"No records could be read from {path.name}; check that it is "
                                 f"a {ingest_file.format} file (or pass --format).")
    except UnsupportedInput as error:
        ingest_file.status, ingest_file.error = IngestFile.Status.FAILED, str(error)
    except Exception as error:
        logger.exception("ingest of %s failed", path.name)
        ingest_file.status = IngestFile.Status.FAILED
        ingest_file.error = f"{type(error).__name__}: {error}"
    _record_report(state)
    ingest_file.finished_at = timezone.now()
    ingest_file.save()
    logger.info("ingested %s: %d read, %d new, %d updated, %d unchanged, %d deleted, "
                "%d skipped %s", path.name, ingest_file.articles_read, ingest_file.created,
                ingest_file.updated, ingest_file.unchanged, ingest_file.deleted,
                ingest_file.skipped, dict(ingest_file.issues))
    if progress:
        progress(ingest_file)
    return ingest_file


def _skip(state: _FileState, reason: str) -> None:
    state.report.skip(reason)
    state.service_skips += 1


def _record_report(state: _FileState) -> None:
    """Copy the reader's counts onto the row: records it dropped were read, then skipped."""
    ingest_file = state.ingest_file
    ingest_file.bytes_done = state.report.bytes_done
    ingest_file.issues = dict(sorted(state.report.issues.items()))
    ingest_file.skipped = state.report.skipped
    ingest_file.articles_read = state.records_seen + state.report.skipped - state.service_skips


def _flush(state: _FileState) -> None:
    batch, state.pending = state.pending, []
    ingest_file = state.ingest_file
    if batch:
        hashes = {article.pmid: article.content_hash(CHUNKER_VERSION) for article in batch}
        existing: dict[str, tuple[int, str]] = {
            pmid: (article_id, stored_hash) for article_id, pmid, stored_hash in
            Article.objects.filter(pmid__in=list(hashes)).values_list("id", "pmid",
                                                                      "content_hash")}
        changed = [a for a in batch
                   if existing.get(a.pmid, (0, ""))[1] != hashes[a.pmid]]
        ingest_file.unchanged += len(batch) - len(changed)
        if changed:
            _store_articles(state, changed, hashes, existing)
    _record_report(state)
    ingest_file.save(update_fields=["articles_read", "created", "updated", "unchanged",
                                    "deleted", "skipped", "chunks_embedded", "issues",
                                    "bytes_done"])
    if state.progress:
        state.progress(ingest_file)


def _store_articles(state: _FileState, articles: list[ParsedArticle], hashes: dict[str, str],
                    existing: dict[str, tuple[int, str]]) -> None:
    max_tokens = embedding.max_tokens()
    drafts = {a.pmid: chunk_article(a.title, a.sections, max_tokens=max_tokens,
                                    count_tokens=embedding.count_tokens) for a in articles}
    source = Path(state.ingest_file.path).name[:300]
    with transaction.atomic():
        rows = []
        for parsed in articles:
            row = Article(
                pmid=parsed.pmid, collection=state.collection, title=parsed.title,
                abstract=parsed.abstract, abstract_sections=[list(s) for s in parsed.sections],
                journal=parsed.journal, year=parsed.year, mesh_terms=parsed.mesh_terms,
                publication_types=parsed.publication_types, language=parsed.language,
                retracted=parsed.retracted, retraction_notice_pmid=parsed.retraction_notice_pmid,
                content_hash=hashes[parsed.pmid], source_file=source,
            )
            if parsed.pmid in existing:
                row.pk = existing[parsed.pmid][0]
            rows.append(row)
        new_rows = [row for row in rows if row.pk is None]
        old_rows = [row for row in rows if row.pk is not None]
        Article.objects.bulk_create(new_rows)
        if old_rows:
            now = timezone.now()
            for row in old_rows:
                row.updated_at = now
            Article.objects.bulk_update(old_rows, [
                "collection", "title", "abstract", "abstract_sections", "journal", "year",
                "mesh_terms", "publication_types", "language", "retracted",
                "retraction_notice_pmid", "content_hash",
                "source_file", "updated_at"])
            Chunk.objects.filter(article_id__in=[row.pk for row in old_rows]).delete()
        if any(row.pk is None for row in new_rows):  # backends without RETURNING
            ids = dict(Article.objects.filter(pmid__in=[r.pmid for r in new_rows])
                       .values_list("pmid", "id"))
            for row in new_rows:
                row.pk = ids[row.pmid]
        chunk_rows = []
        for row in rows:
            for draft in drafts[row.pmid]:
                chunk_rows.append(Chunk(article_id=row.pk, position=draft.position,
                                        section=draft.section, text=draft.text,
                                        content_hash=content_hash(draft.embedded_text(row.title))))
        Chunk.objects.bulk_create(chunk_rows)
        state.ingest_file.created += len(new_rows)
        state.ingest_file.updated += len(old_rows)
    titles = {row.pk: row.title for row in rows}
    texts = {chunk.content_hash: drafts_text(titles[chunk.article_id], chunk.text)
             for chunk in chunk_rows}
    state.ingest_file.chunks_embedded += ensure_embeddings(texts)


def _delete_articles(state: _FileState, pmids: list[str], *, note_missing: bool = True) -> None:
    """Remove articles (their chunks cascade); the index drops them at the run's rebuild and
    search already skips hits whose chunk is gone."""
    present = Article.objects.filter(pmid__in=pmids)
    count = present.count()
    if count:
        present.delete()
        state.ingest_file.deleted += count
    if note_missing and count < len(pmids):
        state.report.issues["deletion of a PMID not in the database"] += len(pmids) - count


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
