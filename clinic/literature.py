"""The literature page: what is indexed, what is still indexing, search and browse it.

Reads only (selectors) and one thin view; search is retrieval's own hybrid search, so a
clinician sees the same evidence the answering pipeline would find. The search text is the
clinician's words: it is never logged here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from retrieval.errors import RetrievalError
from retrieval.index_store import current_status
from retrieval.models import Article, Chunk, IngestFile, IngestRun
from retrieval.search import Hit, search

ARTICLES_PER_PAGE = 20
SEARCH_RESULTS = 20
MAX_QUERY_CHARS = 300
OPEN_RUN_STATUSES = (IngestRun.Status.PENDING, IngestRun.Status.RUNNING,
                     IngestRun.Status.INDEXING)


@dataclass
class FileProgress:
    name: str
    status: str
    status_label: str
    percent: int
    articles_read: int
    created: int


@dataclass
class RunProgress:
    run_id: int
    status: str
    status_label: str
    started: Any
    files: list[FileProgress] = field(default_factory=list)


@dataclass
class LiteratureOverview:
    articles: int
    chunks: int
    index: dict[str, Any]
    indexing: list[RunProgress]
    last_finished: IngestRun | None
    index_built_at: datetime | None = None


def _file_progress(ingest_file: IngestFile) -> FileProgress:
    percent = 100 if ingest_file.status == IngestFile.Status.DONE else (
        min(99, int(100 * ingest_file.bytes_done / ingest_file.bytes_total))
        if ingest_file.bytes_total else 0)
    return FileProgress(name=Path(ingest_file.path).name, status=ingest_file.status,
                        status_label=ingest_file.get_status_display(), percent=percent,
                        articles_read=ingest_file.articles_read, created=ingest_file.created)


def literature_overview() -> LiteratureOverview:
    """Counts in the database, the index being served, and the runs still going."""
    open_runs = IngestRun.objects.filter(status__in=OPEN_RUN_STATUSES).prefetch_related(
        Prefetch("files", queryset=IngestFile.objects.order_by("pk")))
    indexing = [RunProgress(run_id=run.pk, status=run.status,
                            status_label=run.get_status_display(), started=run.created_at,
                            files=[_file_progress(f) for f in run.files.all()])
                for run in open_runs]
    index = current_status()
    try:
        built_at = datetime.fromisoformat(str(index.get("built_at")))
    except ValueError:
        built_at = None
    return LiteratureOverview(
        articles=Article.objects.count(), chunks=Chunk.objects.count(), index=index,
        indexing=indexing,
        last_finished=IngestRun.objects.exclude(status__in=OPEN_RUN_STATUSES).first(),
        index_built_at=built_at)


def recent_articles(page_number: str | None) -> Page[Article]:
    """Indexed articles, newest publication year first."""
    articles = Article.objects.only(
        "pmid", "title", "journal", "year", "publication_types", "retracted").order_by(
        "-year", "-pmid")
    return Paginator(articles, ARTICLES_PER_PAGE).get_page(page_number)


@dataclass
class LiteratureSearch:
    hits: list[Hit]
    error: str = ""


def literature_search(query: str) -> LiteratureSearch:
    try:
        return LiteratureSearch(search(query, k=SEARCH_RESULTS).hits)
    except RetrievalError as error:
        return LiteratureSearch([], str(error))


@require_GET
def literature(request: HttpRequest) -> HttpResponse:
    query = " ".join(request.GET.get("q", "").split())[:MAX_QUERY_CHARS]
    found = literature_search(query) if query else None
    return render(request, "clinic/literature.html", {
        "query": query, "found": found, "overview": literature_overview(),
        "page": None if query else recent_articles(request.GET.get("page")),
    })
