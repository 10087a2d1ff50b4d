"""Hybrid search: BM25 and dense candidates, reciprocal-rank fusion, then a rerank stage.

Stages work on chunks and keep the best chunk per article, so k hits are k different
articles (k independent sources beat three passages of one abstract). The rerank stage is a
cross-encoder when settings.RERANKER_MODEL is set; otherwise it rescores the fused top
articles with a convex combination of min-max normalised scores (Bruch et al. 2023 found this
fusion more accurate than RRF when scores are available): the exact cosine similarity of each
chunk and its BM25, normalised over the candidate chunks, plus the BM25 of the whole article
as one document, normalised over the candidate articles (passage and document evidence
together, after Callan 1994). An article scores as its best chunk plus its article term. The
weights were chosen on one half of the PubMedQA questions and checked on the other
(`bench/tune_rescore.py`). Query text is never logged at INFO or above.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings

from retrieval import embedding, lexical
from retrieval.errors import RetrievalError
from retrieval.index_store import LoadedIndex, get_index
from retrieval.models import Chunk

__all__ = ["Hit", "RetrievalError", "SearchFilters", "SearchResult", "search", "MODES"]

logger = logging.getLogger(__name__)

MODES = ("bm25", "dense", "hybrid", "hybrid+rerank")
MAX_K = 100
STAGE_DEPTH = 100  # candidates each first stage hands to fusion
RRF_K = 60  # the constant of Cormack et al. 2009
FETCH_CANDIDATES = 20  # ranked chunks read beyond k, for hits the database drops
FETCH_SLACK = 5  # of which read with the first k; the rest only when fewer than k remain
RERANK_DEPTH = 100  # fused articles the rerank stage rescores
CROSS_ENCODER_DEPTH = 30
# Rescoring weights: chunk cosine, chunk BM25, article BM25 (bench/tune_rescore.py chose them).
RESCORE_WEIGHTS = (0.55, 0.0, 0.45)
RESCORE_WEIGHTS_WITHOUT_ARTICLE_BM25 = (0.5, 0.5, 0.0)  # index versions built before it
MAX_QUERY_CHARS = 4000
PQ_REFINE_FACTOR = 4  # IVF-PQ fetches 4x the candidates, then re-scores them exactly
# The columns a Hit shows, in the order _hits unpacks them.
HIT_FIELDS = ("id", "section", "text", "article__pmid", "article__title", "article__journal",
              "article__year", "article__publication_types", "article__retracted",
              "article__retraction_notice_pmid")


@dataclass(frozen=True)
class SearchFilters:
    year_from: int | None = None
    year_to: int | None = None
    publication_types: tuple[str, ...] = ()
    exclude_retracted: bool = True


@dataclass
class Hit:
    chunk_id: int
    pmid: str
    title: str
    journal: str
    year: int | None
    publication_types: list[str]
    retracted: bool
    section: str
    text: str
    score: float
    stages: dict[str, int] = field(default_factory=dict)
    retraction_notice_pmid: str = ""


@dataclass
class SearchResult:
    hits: list[Hit]
    query_embedding: np.ndarray | None
    index_version: str
    timings_ms: dict[str, float]


def reranker_name() -> str:
    model = settings.RERANKER_MODEL
    cosine, bm25, article = RESCORE_WEIGHTS
    return f"cross-encoder:{model}" if model else \
        f"rescore:cosine*{cosine}+bm25*{bm25}+article_bm25*{article}"


# --- stages -------------------------------------------------------------------------------


@dataclass
class _Ranked:
    """A stage's ranking collapsed to articles: article id -> (rank, chunk position, score)."""

    by_article: dict[int, tuple[int, int, float]] = field(default_factory=dict)

    def ordered(self) -> list[tuple[int, int, float]]:
        return sorted(((rank, position, score) for rank, position, score in
                       self.by_article.values()))


def _collapse(index: LoadedIndex, positions: np.ndarray, scores: np.ndarray) -> _Ranked:
    ranked = _Ranked()
    for position, score in zip(positions.tolist(), scores.tolist(), strict=True):
        article = int(index.article_ids[position])
        if article not in ranked.by_article:
            ranked.by_article[article] = (len(ranked.by_article) + 1, position, float(score))
    return ranked


def _query_scores(model: Any, query: str) -> np.ndarray | None:
    """A bm25s model's score of every row for the query; None when no term is known."""
    vocabulary = model.vocab_dict
    tokens = [token for token in lexical.tokenize(query) if token in vocabulary]
    if not tokens:
        return None
    return np.asarray(model.get_scores(tokens), dtype=np.float32)


def _bm25_scores(index: LoadedIndex, query: str) -> np.ndarray | None:
    scores = _query_scores(index.bm25, query)
    return None if scores is None else scores[: index.size]


def _article_bm25_scores(index: LoadedIndex, query: str) -> np.ndarray | None:
    """BM25 of each whole article (rows follow index.article_rows); None when no query term
    is in the vocabulary or the index version predates the article-level index."""
    return None if index.article_bm25 is None else _query_scores(index.article_bm25, query)


def _bm25_stage(index: LoadedIndex, scores: np.ndarray | None, mask: np.ndarray | None,
                depth: int) -> _Ranked:
    if scores is None:
        return _Ranked()
    scores = scores if mask is None else np.where(mask, scores, 0.0)
    candidates = np.flatnonzero(scores > 0)
    if candidates.size > depth:
        candidates = candidates[np.argpartition(-scores[candidates], depth - 1)[:depth]]
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    return _collapse(index, order, scores[order])


def dense_search(index: LoadedIndex, query_vector: np.ndarray, depth: int,
                 mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Top positions and scores among allowed chunks, exact for the flat indexes."""
    import faiss

    # One OpenMP thread per query. FAISS splits one query's scan over all cores, and the
    # threads then wait for each other; with the cores busy (other requests, the worker's
    # indexing, the model server) that wait costs more than the split saves: 120 ms with two
    # threads against 32 ms with one for 60k vectors at load average 8 on 2 cores
    # (bench/retrieval.py). Concurrent requests still use every core. The setting belongs
    # to the calling thread (an OpenMP ICV), so an index build in another thread keeps all.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return _dense_search(index, query_vector, depth, mask)
    finally:
        faiss.omp_set_num_threads(threads)


def _dense_search(index: LoadedIndex, query_vector: np.ndarray, depth: int,
                  mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    depth = min(depth, index.size)
    if index.manifest.get("index_type") == "ivf-pq":
        depth = min(index.size, depth * PQ_REFINE_FACTOR)  # trimmed back after re-scoring
    query = np.ascontiguousarray(query_vector.reshape(1, -1), dtype=np.float32)
    if mask is None:
        scores, positions = index.dense.search(query, depth)
    else:
        excluded = int(index.size - np.count_nonzero(mask))
        if excluded <= 1024 or index.on_gpu:
            # Few exclusions (retracted articles): search deeper and drop them, which is
            # exact and cheaper than a selector on every query.
            scores, positions = index.dense.search(query, min(index.size, depth + excluded,
                                                              2048 if index.on_gpu else 1 << 30))
        else:
            faiss_any: Any = faiss  # its stubs lack the keyword constructors
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(index.size, faiss.swig_ptr(bitmap))
            kind = index.manifest.get("index_type")
            if kind == "hnsw":
                params: Any = faiss_any.SearchParametersHNSW(sel=selector,
                                                         efSearch=max(depth, 128))
            elif kind == "ivf-pq":
                params = faiss_any.SearchParametersIVF(sel=selector,
                                                   nprobe=faiss.extract_index_ivf(
                                                       index.dense).nprobe)
            else:
                params = faiss_any.SearchParameters(sel=selector)
            scores, positions = index.dense.search(query, depth, params=params)
    keep = positions[0] >= 0
    found_positions, found_scores = positions[0][keep], scores[0][keep]
    if index.manifest.get("index_type") == "ivf-pq" and found_positions.size:
        # PQ scores are approximate: re-score the candidates with the stored vectors.
        found_scores = np.asarray(index.vectors[found_positions], dtype=np.float32) @ \
            query[0]
        order = np.argsort(-found_scores, kind="stable")
        found_positions, found_scores = found_positions[order], found_scores[order]
    if mask is not None:
        allowed = mask[found_positions]
        found_positions, found_scores = found_positions[allowed], found_scores[allowed]
    return found_positions, found_scores


def _fuse(stages: list[_Ranked]) -> list[tuple[int, float, int]]:
    """Reciprocal-rank fusion: [(article id, score, representative chunk position)]."""
    fused: dict[int, list[Any]] = {}
    for stage in stages:
        for article, (rank, position, _score) in stage.by_article.items():
            entry = fused.setdefault(article, [0.0, position, rank])
            entry[0] += 1.0 / (RRF_K + rank)
            if rank < entry[2]:  # represent the article by its best-ranked chunk
                entry[1], entry[2] = position, rank
    return sorted(((article, e[0], e[1]) for article, e in fused.items()),
                  key=lambda item: -item[1])


def _article_positions(index: LoadedIndex, article: int) -> np.ndarray:
    start = int(np.searchsorted(index.article_ids, article, side="left"))
    end = int(np.searchsorted(index.article_ids, article, side="right"))
    return np.arange(start, end)


def _minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _rescore(index: LoadedIndex, fused: list[tuple[int, float, int]], query_vector: np.ndarray,
             bm25_scores: np.ndarray | None, article_scores: np.ndarray | None,
             mask: np.ndarray | None) -> list[tuple[int, float, int]]:
    cosine_weight, bm25_weight, article_weight = RESCORE_WEIGHTS if \
        index.article_bm25 is not None else RESCORE_WEIGHTS_WITHOUT_ARTICLE_BM25
    candidates = fused[:RERANK_DEPTH]
    if not candidates:
        return []
    # Every chunk of every candidate article, grouped by candidate (vectorised: a loop over
    # 100 articles cost ~0.6 ms a query).
    articles = np.array([article for article, _s, _p in candidates])
    starts = np.searchsorted(index.article_ids, articles, side="left")
    lengths = np.searchsorted(index.article_ids, articles, side="right") - starts
    group = np.repeat(np.arange(len(candidates)), lengths)
    flat = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(group.size)
    if mask is not None:
        allowed = mask[flat]
        flat, group = flat[allowed], group[allowed]
    if flat.size == 0:
        return []
    cosine = np.asarray(index.vectors[np.sort(flat)], dtype=np.float32) @ query_vector
    cosine = cosine[np.argsort(np.argsort(flat))]  # back to flat's order (mmap reads sorted)
    lexical_scores = bm25_scores[flat] if bm25_scores is not None else np.zeros(flat.size)
    combined = cosine_weight * _minmax(cosine) + \
        bm25_weight * _minmax(np.asarray(lexical_scores, dtype=np.float32))
    article_term = np.zeros(len(candidates), dtype=np.float32)
    if article_scores is not None and article_weight:
        rows = np.searchsorted(index.article_rows, articles)
        article_term = (article_weight * _minmax(article_scores[rows])).astype(np.float32)
    # Each candidate's best chunk: groups in candidate order, best score first, ties to the
    # earlier chunk (a stable sort).
    order = np.lexsort((-combined, group))
    firsts = order[np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])]
    results = [(int(articles[g]), float(combined[best]) + float(article_term[g]), int(flat[best]))
               for g, best in zip(group[firsts].tolist(), firsts.tolist(), strict=True)]
    return sorted(results, key=lambda item: -item[1])


_cross_encoder_lock = threading.Lock()
_cross_encoder: Any = None
_cross_encoder_name = ""


def _get_cross_encoder() -> Any:
    global _cross_encoder, _cross_encoder_name
    name = str(settings.RERANKER_MODEL)
    with _cross_encoder_lock:
        if _cross_encoder is None or _cross_encoder_name != name:
            from sentence_transformers import CrossEncoder

            try:
                _cross_encoder = CrossEncoder(name, device="cpu")
            except Exception as error:
                raise RetrievalError(
                    f"Cannot load the reranker {name!r} ({type(error).__name__}); fix or unset "
                    "RERANKER_MODEL.") from error
            _cross_encoder_name = name
    return _cross_encoder


def _cross_encode(index: LoadedIndex, fused: list[tuple[int, float, int]], query: str
                  ) -> list[tuple[int, float, int]]:
    candidates = fused[:CROSS_ENCODER_DEPTH]
    chunk_ids = [int(index.chunk_ids[position]) for _a, _s, position in candidates]
    rows = {c.pk: c for c in Chunk.objects.select_related("article").filter(pk__in=chunk_ids)}
    present = [(c, chunk_id) for c, chunk_id in zip(candidates, chunk_ids, strict=True)
               if chunk_id in rows]
    pairs = [(query, f"{rows[i].article.title}\n{rows[i].text}") for _c, i in present]
    if not pairs:
        return []
    scores = _get_cross_encoder().predict(pairs, show_progress_bar=False)
    return sorted(((c[0], float(s), c[2]) for (c, _i), s in zip(present, scores, strict=True)),
                  key=lambda item: -item[1])


# --- entry point --------------------------------------------------------------------------


def search(query: str, *, k: int = 10, mode: str = "hybrid+rerank",
           filters: SearchFilters | None = None,
           query_embedding: np.ndarray | None = None) -> SearchResult:
    if mode not in MODES:
        raise RetrievalError(f"Unknown search mode {mode!r}; use one of {', '.join(MODES)}.")
    if not 1 <= k <= MAX_K:
        raise RetrievalError(f"k must be between 1 and {MAX_K}; got {k}.")
    query = " ".join(str(query).split())[:MAX_QUERY_CHARS]
    if not query and query_embedding is None:
        raise RetrievalError("The question is empty; type a question to search for.")
    filters = filters or SearchFilters()
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round((now - since) * 1000, 3)
        return now

    index = get_index()
    mark = lap("index", started)
    mask = index.allowed_mask(filters.year_from, filters.year_to,
                              tuple(filters.publication_types), filters.exclude_retracted)
    depth = max(STAGE_DEPTH, 3 * k)
    uses_dense = mode != "bm25"
    uses_bm25 = mode != "dense"
    if index.size == 0:
        return SearchResult([], query_embedding, index.version, timings)

    bm25_scores = None
    bm25_stage = _Ranked()
    if uses_bm25:
        bm25_scores = _bm25_scores(index, query)
        bm25_stage = _bm25_stage(index, bm25_scores, mask, depth)
        mark = lap("bm25", mark)
    dense_stage = _Ranked()
    if uses_dense:
        if query_embedding is None:
            try:
                query_embedding = embedding.embed_query(query)
            except embedding.EmbeddingModelError as error:
                raise RetrievalError(str(error)) from error
            mark = lap("embed", mark)
        query_embedding = np.asarray(query_embedding, dtype=np.float32)
        positions, scores = dense_search(index, query_embedding, depth, mask)
        dense_stage = _collapse(index, positions, scores)
        mark = lap("dense", mark)

    stage_ranks: dict[str, dict[int, int]] = {
        "bm25": {a: r for a, (r, _p, _s) in bm25_stage.by_article.items()},
        "dense": {a: r for a, (r, _p, _s) in dense_stage.by_article.items()},
    }
    if mode in ("bm25", "dense"):
        single = bm25_stage if mode == "bm25" else dense_stage
        final = [(article, score, position) for article, (_r, position, score) in
                 sorted(single.by_article.items(), key=lambda item: item[1][0])]
    else:
        final = _fuse([bm25_stage, dense_stage])
        stage_ranks["hybrid"] = {article: rank for rank, (article, _s, _p) in
                                 enumerate(final, start=1)}
        mark = lap("fusion", mark)
        if mode == "hybrid+rerank":
            assert query_embedding is not None
            if settings.RERANKER_MODEL:
                final = _cross_encode(index, final, query)
            else:
                final = _rescore(index, final, query_embedding, bm25_scores,
                                 _article_bm25_scores(index, query), mask)
            stage_ranks["rerank"] = {article: rank for rank, (article, _s, _p) in
                                     enumerate(final, start=1)}
            mark = lap("rerank", mark)

    hits = _hits(index, final, k, filters, stage_ranks)
    mark = lap("fetch", mark)
    timings["total"] = round((mark - started) * 1000, 3)
    logger.debug("search mode=%s k=%d hits=%d index=%s ms=%s", mode, k, len(hits),
                 index.version, timings["total"])
    return SearchResult(hits, query_embedding, index.version, timings)


def _hits(index: LoadedIndex, ranked: list[tuple[int, float, int]], k: int,
          filters: SearchFilters, stage_ranks: dict[str, dict[int, int]]) -> list[Hit]:
    """Rows for the top chunks; the database is fresher than the index, so chunks deleted or
    articles retracted since the build are dropped here."""
    wanted = ranked[: k + FETCH_CANDIDATES]
    wanted_types = {t.lower() for t in filters.publication_types}
    hits: list[Hit] = []
    # The first k + FETCH_SLACK rows nearly always give k hits; the rest only when not.
    for part in (wanted[: k + FETCH_SLACK], wanted[k + FETCH_SLACK:]):
        if len(hits) == k or not part:
            break
        _add_hits(hits, index, part, k, filters, wanted_types, stage_ranks)
    return hits


def _add_hits(hits: list[Hit], index: LoadedIndex, part: list[tuple[int, float, int]], k: int,
              filters: SearchFilters, wanted_types: set[str],
              stage_ranks: dict[str, dict[int, int]]) -> None:
    chunk_ids = [int(index.chunk_ids[position]) for _a, _s, position in part]
    # Plain tuples of the shown columns: a third of the cost of model instances (the abstract,
    # its sections and the MeSH terms stay in the database).
    rows = {row[0]: row for row in Chunk.objects.filter(pk__in=chunk_ids).order_by()
            .values_list(*HIT_FIELDS)}
    for (article_id, score, _position), chunk_id in zip(part, chunk_ids, strict=True):
        row = rows.get(chunk_id)
        if row is None:
            continue
        (_id, section, text, pmid, title, journal, year, publication_types, retracted,
         retraction_notice_pmid) = row
        if filters.exclude_retracted and retracted:
            continue
        if wanted_types and not wanted_types & {t.lower() for t in publication_types}:
            continue
        hits.append(Hit(
            chunk_id=chunk_id, pmid=pmid, title=title, journal=journal, year=year,
            publication_types=list(publication_types), retracted=retracted, section=section,
            text=text, score=round(score, 6), retraction_notice_pmid=retraction_notice_pmid,
            stages={name: ranks[article_id] for name, ranks in stage_ranks.items()
                    if article_id in ranks},
        ))
        if len(hits) == k:
            return
