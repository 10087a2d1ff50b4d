"""The literature: articles, their chunks, and the index versions built over them."""

from __future__ import annotations

from django.db import models


class Article(models.Model):
    pmid = models.CharField(max_length=20, unique=True)
    collection = models.CharField(max_length=64, default="pubmed", db_index=True)
    title = models.TextField(blank=True)
    abstract = models.TextField(blank=True)
    journal = models.CharField(max_length=400, blank=True)
    year = models.PositiveSmallIntegerField(null=True, blank=True, db_index=True)
    mesh_terms = models.JSONField(default=list, blank=True)
    publication_types = models.JSONField(default=list, blank=True)
    language = models.CharField(max_length=16, blank=True)
    retracted = models.BooleanField(default=False, db_index=True)
    content_hash = models.CharField(max_length=64)
    source_file = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"PMID {self.pmid}"


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
