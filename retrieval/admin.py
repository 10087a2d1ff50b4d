"""Admin: the literature, and ingest runs with a progress line per run and per file."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, Q, QuerySet, Sum
from django.http import HttpRequest

from retrieval.models import Article, Chunk, IngestFile, IngestRun, RetrievalEvalRun


def _percent(done: int, total: int) -> str:
    return f"{100 * done / total:.0f}%" if total else "-"


class IngestFileInline(admin.TabularInline):
    model = IngestFile
    extra = 0
    can_delete = False
    fields = ("path", "format", "status", "waiting_for", "progress", "articles_read", "created",
              "updated", "unchanged", "deleted", "skipped", "chunks_embedded", "issues", "error",
              "heartbeat_at")
    readonly_fields = fields

    @admin.display(description="progress")
    def progress(self, ingest_file: IngestFile) -> str:
        return _percent(ingest_file.bytes_done, ingest_file.bytes_total)

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(IngestRun)
class IngestRunAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "collection", "status", "progress_line", "index_version")
    list_filter = ("status", "collection")
    readonly_fields = ("collection", "status", "use_celery", "index_version", "error",
                       "created_at", "finished_at", "progress_line")
    inlines = [IngestFileInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[IngestRun]:
        return super().get_queryset(request).annotate(
            files_total=Count("files"),
            files_finished=Count("files", filter=Q(files__status__in=[
                IngestFile.Status.DONE, IngestFile.Status.FAILED])),
            bytes_total=Sum("files__bytes_total"),
            bytes_done=Sum("files__bytes_done"), read=Sum("files__articles_read"),
            skipped_total=Sum("files__skipped"),
        )

    @admin.display(description="progress")
    def progress_line(self, run: IngestRun) -> str:
        def total(name: str) -> int:
            return int(getattr(run, name, 0) or 0)

        return (f"{total('files_finished')}/{total('files_total')} files, "
                f"{_percent(total('bytes_done'), total('bytes_total'))} of bytes, "
                f"{total('read')} records read, {total('skipped_total')} skipped; "
                f"{run.get_status_display()}")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Article)
class ArticleAdmin(admin.ModelAdmin):
    list_display = ("pmid", "title", "journal", "year", "retracted", "collection")
    list_filter = ("retracted", "collection", "language")
    search_fields = ("pmid", "title")
    readonly_fields = ("content_hash", "created_at", "updated_at")


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ("id", "article", "position", "section")
    list_select_related = ("article",)
    search_fields = ("article__pmid",)
    raw_id_fields = ("article",)


@admin.register(RetrievalEvalRun)
class RetrievalEvalRunAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "suite", "questions", "index_version", "embedding_model",
                    "reranker")
    readonly_fields = [f.name for f in RetrievalEvalRun._meta.fields]
