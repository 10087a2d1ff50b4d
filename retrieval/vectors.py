"""Stored chunk vectors: one per content hash and embedding model, embedded once and reused by
every ingest and every index build."""

from __future__ import annotations

import numpy as np

from retrieval import embedding
from retrieval.models import ChunkEmbedding

EMBED_LOOKUP_BATCH = 500  # hashes per IN (...) query; well under SQLite's variable limit


def drafts_text(title: str, text: str) -> str:
    return f"{title}\n{text}" if title else text


def ensure_embeddings(texts_by_hash: dict[str, str]) -> int:
    """Embed the texts whose hash has no stored vector for the current model; returns count."""
    missing = missing_embeddings(texts_by_hash)
    if missing:
        store_embeddings(list(missing), embedding.embed_texts(list(missing.values())))
    return len(missing)


def missing_embeddings(texts_by_hash: dict[str, str]) -> dict[str, str]:
    """The texts (by content hash) with no stored vector for the current model."""
    if not texts_by_hash:
        return {}
    model_name = embedding.embedding_model_name()
    hashes = list(texts_by_hash)
    known: set[str] = set()
    for start in range(0, len(hashes), EMBED_LOOKUP_BATCH):
        known.update(ChunkEmbedding.objects.filter(
            model_name=model_name, content_hash__in=hashes[start:start + EMBED_LOOKUP_BATCH],
        ).values_list("content_hash", flat=True))
    return {h: texts_by_hash[h] for h in hashes if h not in known}


def store_embeddings(hashes: list[str], vectors: np.ndarray) -> None:
    """Store one vector per content hash for the current model (an existing one is kept)."""
    model_name = embedding.embedding_model_name()
    ChunkEmbedding.objects.bulk_create(
        [ChunkEmbedding(model_name=model_name, content_hash=h, dimension=vectors.shape[1],
                        vector=np.asarray(vector, dtype="<f4").tobytes())
         for h, vector in zip(hashes, vectors, strict=True)],
        ignore_conflicts=True, batch_size=500)
