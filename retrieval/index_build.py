"""Build a new index version from the database, aside, then swap CURRENT to it.

Vectors come from ChunkEmbedding (keyed by chunk text hash), so a rebuild embeds only chunks
never seen before. A build whose inputs (chunks, their metadata, the model) match the current
version's fingerprint is skipped: re-running the same ingest changes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np

from retrieval import embedding, index_store, lexical
from retrieval.chunking import CHUNKER_VERSION
from retrieval.models import Chunk, ChunkEmbedding
from retrieval.vectors import drafts_text, ensure_embeddings

logger = logging.getLogger(__name__)

FLAT_MAX_VECTORS = 250_000  # exact search stays under ~50 ms per query on a few cores
HNSW_MAX_VECTORS = 5_000_000  # beyond this HNSW's graph memory grows past the codes' worth
KEEP_VERSIONS = 3
INDEX_TYPES = ("flat-ip", "hnsw", "ivf-pq", "gpu-flat-fp16")
BM25_K1, BM25_B = 1.2, 0.75


def choose_index_type(vectors: int, gpus: int) -> str:
    if gpus > 0:
        return "gpu-flat-fp16"
    if vectors <= FLAT_MAX_VECTORS:
        return "flat-ip"
    if vectors <= HNSW_MAX_VECTORS:
        return "hnsw"
    return "ivf-pq"


def make_dense_index(vectors: np.ndarray, index_type: str) -> tuple[Any, dict[str, Any]]:
    """A CPU faiss index over normalised vectors (inner product = cosine) and its params."""
    import faiss

    count, dimension = vectors.shape
    index: Any
    if index_type in ("flat-ip", "gpu-flat-fp16"):
        # GPU versions are stored as a flat CPU index and copied to the GPU (fp16) at load.
        index = faiss.IndexFlatIP(dimension)
        params: dict[str, Any] = {}
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        params = {"M": 32, "efConstruction": 80, "efSearch": index_store.HNSW_EF_SEARCH}
    elif index_type == "ivf-pq":
        nlist = int(max(16, min(65536, 4 * np.sqrt(count))))
        subquantizers = 48 if dimension % 48 == 0 else 32 if dimension % 32 == 0 else 16
        quantizer = faiss.IndexFlatIP(dimension)
        index = faiss.IndexIVFPQ(quantizer, dimension, nlist, subquantizers, 8,
                                 faiss.METRIC_INNER_PRODUCT)
        # faiss wants at least 39 points per centroid; more only slows training down.
        sample = vectors[np.random.default_rng(0).choice(count, min(count, 40 * nlist),
                                                           replace=False)]
        index.train(sample)
        params = {"nlist": nlist, "m": subquantizers, "nbits": 8,
                  "nprobe": index_store.ivf_nprobe(nlist)}
    else:
        raise ValueError(f"Unknown index type {index_type!r}; use one of {', '.join(INDEX_TYPES)}.")
    if count:
        index.add(vectors)
    return index, params


@contextmanager
def _build_lock() -> Iterator[None]:
    root = index_store.index_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # builds queue up; they never interleave
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_vectors(hashes: list[str], model_name: str, dimension: int) -> np.ndarray:
    by_hash: dict[str, bytes | memoryview] = {}
    unique = list(dict.fromkeys(hashes))
    for start in range(0, len(unique), 500):
        by_hash.update(ChunkEmbedding.objects.filter(
            model_name=model_name, content_hash__in=unique[start:start + 500],
        ).values_list("content_hash", "vector"))
    matrix = np.empty((len(hashes), dimension), dtype=np.float32)
    for row, content_hash in enumerate(hashes):
        matrix[row] = np.frombuffer(by_hash[content_hash], dtype="<f4")
    return matrix


def build_index(*, index_type: str | None = None, force: bool = False) -> dict[str, Any]:
    """Build (or keep) the current version; returns its manifest."""
    with _build_lock():
        return _build_locked(index_type=index_type, force=force)


def _build_locked(*, index_type: str | None, force: bool) -> dict[str, Any]:
    import bm25s
    import faiss

    started = time.monotonic()
    rows = list(Chunk.objects.order_by("article_id", "position").values_list(
        "id", "article_id", "content_hash", "text", "section", "article__title",
        "article__year", "article__retracted", "article__publication_types"))
    model_name = embedding.embedding_model_name()
    fingerprint = hashlib.sha256()
    fingerprint.update(f"{model_name}|{CHUNKER_VERSION}|{lexical.TOKENIZER_NAME}|"
                       f"{index_type or 'auto'}".encode())
    for chunk_id, article_id, content_hash, _t, _s, _ti, year, retracted, types in rows:
        fingerprint.update(f"{chunk_id}|{article_id}|{content_hash}|{year}|{retracted}|"
                           f"{json.dumps(types)}\n".encode())
    digest = fingerprint.hexdigest()
    current = index_store.read_pointer()
    if current and not force:
        try:
            manifest = index_store.read_manifest(current)
            if manifest.get("fingerprint") == digest:
                logger.info("index %s is up to date; nothing to build", current)
                return manifest
        except (OSError, ValueError):
            pass  # unreadable current version: build a fresh one

    # Chunks whose embedding is missing (new model, interrupted ingest) are embedded now.
    texts = {row[2]: drafts_text(row[5], row[3]) for row in rows}
    embedded_now = ensure_embeddings(texts)
    dimension = embedding.embedding_dimension() if rows else 384
    vectors = _load_vectors([row[2] for row in rows], model_name, dimension)
    embed_seconds = time.monotonic() - started

    chosen = index_type or choose_index_type(len(rows), index_store.faiss_gpu_count())
    dense, params = make_dense_index(vectors, chosen)

    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + digest[:8]
    final_dir = index_store.versions_dir() / version
    work_dir = index_store.versions_dir() / f".{version}.partial"
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        faiss.write_index(dense, str(work_dir / "dense.faiss"))
        np.save(work_dir / "vectors.f16.npy", vectors.astype(np.float16))
        np.save(work_dir / "chunk_ids.npy", np.array([r[0] for r in rows], dtype=np.int64))
        np.save(work_dir / "article_ids.npy", np.array([r[1] for r in rows], dtype=np.int64))
        np.save(work_dir / "years.npy", np.array([r[6] or 0 for r in rows], dtype=np.int16))
        np.save(work_dir / "retracted.npy", np.array([bool(r[7]) for r in rows], dtype=bool))
        positions: dict[str, list[int]] = defaultdict(list)
        for position, row in enumerate(rows):
            for name in set(row[8] or []):
                positions[name].append(position)
        type_names = sorted(positions)
        arrays: dict[str, Any] = {f"t{i}": np.array(positions[name], dtype=np.int32)
                                  for i, name in enumerate(type_names)}
        np.savez(work_dir / "pubtypes.npz", **arrays)
        bm25_started = time.monotonic()
        # Each text is tokenized once: a chunk's BM25 document is its title's tokens and its
        # own (as drafts_text joins them); an article's is its title's and all its chunks'.
        title_tokens: dict[int, list[str]] = {}
        documents: dict[int, list[str]] = {}  # document-level evidence, one per article
        corpus = []
        for r in rows:
            if r[1] not in title_tokens:
                title_tokens[r[1]] = lexical.tokenize(r[5] or "")
                documents[r[1]] = list(title_tokens[r[1]])
            passage = lexical.tokenize(r[3])
            documents[r[1]].extend(passage)
            corpus.append(title_tokens[r[1]] + passage or ["<empty>"])
        retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B)
        retriever.index(corpus or [["<empty>"]], show_progress=False)
        retriever.save(str(work_dir / "bm25"))
        # Rows in article id order, so terms spread over several chunks still count together.
        article_retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B)
        article_retriever.index([documents[a] or ["<empty>"] for a in sorted(documents)]
                                or [["<empty>"]], show_progress=False)
        article_retriever.save(str(work_dir / "bm25_articles"))
        bm25_seconds = time.monotonic() - bm25_started
        manifest = {
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "fingerprint": digest,
            "embedding_model": model_name,
            "dimension": dimension,
            "chunker": CHUNKER_VERSION,
            "index_type": chosen,
            "index_params": params,
            "faiss_version": faiss.__version__,
            "gpus_at_build": index_store.faiss_gpu_count(),
            "chunks": len(rows),
            "articles": len({r[1] for r in rows}),
            "retracted_chunks": int(sum(bool(r[7]) for r in rows)),
            "publication_types": type_names,
            "bm25": {"library": "bm25s", "k1": BM25_K1, "b": BM25_B,
                     "tokenizer": lexical.TOKENIZER_NAME, "levels": ["chunk", "article"]},
            "chunks_embedded_during_build": embedded_now,
            "seconds": {"embeddings": round(embed_seconds, 2), "bm25": round(bm25_seconds, 2),
                        "total": round(time.monotonic() - started, 2)},
        }
        (work_dir / index_store.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        work_dir.rename(final_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    index_store.write_pointer(version)
    logger.info("index %s built: %d chunks, %s, %.1fs", version, len(rows), chosen,
                time.monotonic() - started)
    _prune_versions(keep=version)
    return manifest


def _prune_versions(keep: str) -> None:
    """Delete all but the newest few versions (loaded copies live in memory or mmap)."""
    versions = sorted(p for p in index_store.versions_dir().iterdir()
                      if p.is_dir() and not p.name.startswith("."))
    for old in versions[:-KEEP_VERSIONS]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
