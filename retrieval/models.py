"""The literature: articles, their chunks, and the index versions built over them."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.utils import timezone

# An ingest whose heartbeat is older than this has lost its worker (killed, or its host gone):
# another delivery may take the file over. The ingest beats at every batch of articles and at
# least every INGEST_HEARTBEAT_EVERY while it reads, so only a dead or hung one goes this quiet.
INGEST_OWNER_STALE_AFTER = timedelta(minutes=10)
INGEST_HEARTBEAT_EVERY = timedelta(seconds=30)


class Article(models.Model):
    pmid = models.CharField(max_length=20, unique=True)
    collection = models.CharField(max_length=64, default="pubmed", db_index=True)
    title = models.TextField(blank=True)
    abstract = models.TextField(blank=True)
    # [[label, text], ...] in abstract order; label "" for unlabelled abstracts.
    abstract_sections = models.JSONField(default=list, blank=True)
    journal = models.CharField(max_length=400, blank=True)
    year = models.PositiveSmallIntegerField(null=True, blank=True, db_index=True)
    mesh_terms = models.JSONField(default=list, blank=True)
    publication_types = models.JSONField(default=list, blank=True)
    language = models.CharField(max_length=16, blank=True)
    retracted = models.BooleanField(default=False, db_index=True)
    # PubMed's link to the retraction notice (CommentsCorrections RefType="RetractionIn").
    retraction_notice_pmid = models.CharField(max_length=20, blank=True)
    content_hash = models.CharField(max_length=64)
    source_file = models.CharField(max_length=300, blank=True)
    # Where the stored record comes from in NLM's file order (retrieval.file_order): a record
    # from an earlier file never replaces it. 0: a file outside that order (JSONL, PubMedQA,
    # a PubMed export), which replaces and is replaced by anything, as it is read.
    source_sequence = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"PMID {self.pmid}"


class ArticleTombstone(models.Model):
    """A PMID whose newest known record is not stored: deleted by PubMed (DeleteCitation), or
    a stored article replaced by a version without an abstract. A record from an earlier file
    that arrives later does not bring it back; one from a later file does (and removes this)."""

    class Reason(models.TextChoices):
        DELETED = "deleted", "Deleted by PubMed"
        NO_ABSTRACT = "no abstract", "Newest version has no abstract"

    pmid = models.CharField(max_length=20, unique=True)
    source_sequence = models.BigIntegerField()
    reason = models.CharField(max_length=16, choices=Reason.choices)
    source_file = models.CharField(max_length=300, blank=True)
    recorded_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"PMID {self.pmid} ({self.get_reason_display().lower()})"


class Chunk(models.Model):
    """A piece of one article, inside one section; what the indexes hold and answers cite."""

    article = models.ForeignKey(Article, on_delete=models.CASCADE, related_name="chunks")
    position = models.PositiveSmallIntegerField()
    section = models.CharField(max_length=100, blank=True)
    text = models.TextField()
    content_hash = models.CharField(max_length=64, db_index=True)

    class Meta:
        ordering = ["article", "position"]
        constraints = [models.UniqueConstraint(fields=["article", "position"],
                                               name="unique_chunk_position")]

    def __str__(self) -> str:
        return f"chunk {self.position} of article {self.article_id}"


class ChunkEmbedding(models.Model):
    """A chunk's embedding keyed by the hash of the text embedded, so rebuilds reuse it.

    Keyed by (model, content hash), not by chunk id: an article re-ingested with the same
    text, or a rebuilt index, finds its vectors here instead of running the encoder again.
    """

    model_name = models.CharField(max_length=300)
    content_hash = models.CharField(max_length=64)
    dimension = models.PositiveSmallIntegerField()
    vector = models.BinaryField()  # float32, little-endian, L2-normalised
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model_name", "content_hash"],
                                               name="unique_embedding_per_model")]

    def __str__(self) -> str:
        return f"{self.model_name} embedding of {self.content_hash[:12]}"


class IngestRun(models.Model):
    """One `ingest` invocation over one or more files, and the index build that follows it."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Ingesting files"
        INDEXING = "indexing", "Building the index"
        COMPLETE = "complete", "Complete"
        FAILED = "failed", "Failed"

    collection = models.CharField(max_length=64, default="pubmed")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    use_celery = models.BooleanField(default=False)
    index_version = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        files = list(self.files.all())
        totals = {name: sum(getattr(f, name) for f in files)
                  for name in ("articles_read", "created", "updated", "unchanged", "deleted",
                               "skipped")}
        text = (f"ingest run {self.pk} ({self.get_status_display().lower()}): "
                f"{len(files)} file(s), "
                f"{totals['articles_read']} records read, {totals['created']} new, "
                f"{totals['updated']} updated, {totals['unchanged']} unchanged, "
                f"{totals['deleted']} deleted, {totals['skipped']} skipped")
        if self.index_version:
            text += f"; index {self.index_version}"
        return text


class IngestFileQuerySet(models.QuerySet["IngestFile"]):
    def with_live_owner(self, now: datetime | None = None) -> IngestFileQuerySet:
        """Files being ingested right now by a worker whose heartbeat is fresh."""
        stale_before = (now or timezone.now()) - INGEST_OWNER_STALE_AFTER
        return self.filter(status=IngestFile.Status.RUNNING, heartbeat_at__gte=stale_before)

    def without_live_owner(self, now: datetime | None = None) -> IngestFileQuerySet:
        """Pending files, and running ones whose worker has gone quiet: re-queueing these is
        safe (a delivery that finds the file owned exits without work)."""
        stale_before = (now or timezone.now()) - INGEST_OWNER_STALE_AFTER
        return self.filter(
            models.Q(status=IngestFile.Status.PENDING)
            | models.Q(status=IngestFile.Status.RUNNING, heartbeat_at__lt=stale_before)
            | models.Q(status=IngestFile.Status.RUNNING, heartbeat_at__isnull=True))


class IngestFile(models.Model):
    """One input file of a run, with what was read, kept, skipped (and why).

    A worker owns a running file through `claim_token` and keeps `heartbeat_at` fresh
    (retrieval.claims); `owner_alive()` says whether that owner is still at work.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    run = models.ForeignKey(IngestRun, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=1000)
    format = models.CharField(max_length=16)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    articles_read = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    deleted = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    chunks_embedded = models.PositiveIntegerField(default=0)
    # reason -> count, e.g. {"no abstract": 12, "duplicate PMID in file": 1}
    issues = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # The file's place in NLM's order (pubmed26n0001 -> 260001); null outside that order.
    sequence = models.BigIntegerField(null=True, blank=True, db_index=True)
    # The earlier file this one waits for before it may start (a name, for people).
    waiting_for = models.CharField(max_length=300, blank=True)
    claim_token = models.CharField(max_length=32, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = IngestFileQuerySet.as_manager()

    class Meta:
        ordering = ["run", "id"]

    def __str__(self) -> str:
        return f"{self.path} ({self.status})"

    def owner_alive(self, now: datetime | None = None) -> bool:
        """Whether a worker is ingesting this file now (running, heartbeat fresh)."""
        stale_before = (now or timezone.now()) - INGEST_OWNER_STALE_AFTER
        return (self.status == self.Status.RUNNING and self.heartbeat_at is not None
                and self.heartbeat_at >= stale_before)


class RetrievalEvalRun(models.Model):
    """Scores of one retrieval evaluation, kept so runs can be compared over time."""

    suite = models.CharField(max_length=32)
    data_path = models.CharField(max_length=1000)
    questions = models.PositiveIntegerField(default=0)
    skipped_not_indexed = models.PositiveIntegerField(default=0)
    index_version = models.CharField(max_length=64)
    embedding_model = models.CharField(max_length=300)
    reranker = models.CharField(max_length=300, blank=True)
    # mode -> {"recall@1": ..., "mrr@10": ..., "latency_ms_p50": ..., ...}
    results = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.suite} eval on {self.index_version} ({self.created_at:%Y-%m-%d %H:%M})"
