"""Retrieval evaluation against the current index; results are stored to compare over time."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embedding import embedding_model_name
from retrieval.errors import RetrievalError
from retrieval.index_store import get_index
from retrieval.models import Article, RetrievalEvalRun
from retrieval.search import MODES, SearchFilters, reranker_name, search

logger = logging.getLogger(__name__)

METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")
SUITES = ("pubmedqa",)
DEPTH = 10


def load_pubmedqa_questions(path: Path) -> list[tuple[str, str]]:
    """[(pmid, question)] in file order; the relevant document for question P is P."""
    try:
        items = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as error:
        raise RetrievalError(f"Cannot read PubMedQA questions from {path} ({error}); pass "
                             "--data with a pqal/ori_pqaa style JSON file.") from error
    if not isinstance(items, dict):
        raise RetrievalError(f"{path} is not a PubMedQA file (expected an object keyed by PMID).")
    return [(str(pmid), str(item["QUESTION"])) for pmid, item in items.items()
            if isinstance(item, dict) and item.get("QUESTION")]


def compute_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
                    ) -> dict[str, float]:
    """ranx's metrics (numba-compiled: the first call in a process takes a while)."""
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    scores = ranx_evaluate(Qrels(qrels), Run(run), list(METRICS))
    return {metric: round(float(scores[metric]), 4) for metric in METRICS}


def evaluate(suite: str, data_path: Path, *, limit: int | None = None,
             modes: tuple[str, ...] = MODES,
             progress: Callable[[str, int, int], None] | None = None) -> RetrievalEvalRun:
    if suite not in SUITES:
        raise RetrievalError(f"Unknown suite {suite!r}; use one of {', '.join(SUITES)}.")
    questions = load_pubmedqa_questions(data_path)
    if limit:
        questions = questions[:limit]
    index = get_index()
    indexed_articles = set(np.unique(index.article_ids).tolist())
    article_ids = dict(Article.objects.filter(pmid__in=[p for p, _q in questions])
                       .values_list("pmid", "id"))
    present = [(pmid, q) for pmid, q in questions if article_ids.get(pmid) in indexed_articles]
    skipped = len(questions) - len(present)
    if not present:
        raise RetrievalError(
            f"None of the {len(questions)} questions' articles is in index {index.version}; "
            f"ingest {data_path} first (`python manage.py ingest {data_path}`).")
    if skipped:
        logger.warning("%d of %d questions skipped: their article is not in index %s",
                       skipped, len(questions), index.version)

    qrels = {f"q{pmid}": {pmid: 1} for pmid, _q in present}
    results: dict[str, Any] = {}
    filters = SearchFilters(exclude_retracted=False)  # score retrieval, not policy
    for mode in modes:
        runs: dict[str, dict[str, float]] = {}
        latencies = []
        for number, (pmid, question) in enumerate(present, start=1):
            started = time.perf_counter()
            result = search(question, k=DEPTH, mode=mode, filters=filters)
            latencies.append((time.perf_counter() - started) * 1000)
            ranking = {hit.pmid: 1.0 / rank for rank, hit in enumerate(result.hits, start=1)}
            runs[f"q{pmid}"] = ranking or {"-": 0.0}  # ranx needs a row for every query
            if progress:
                progress(mode, number, len(present))
        results[mode] = compute_metrics(qrels, runs)
        results[mode]["latency_ms_p50"] = round(float(np.percentile(latencies, 50)), 2)
        results[mode]["latency_ms_p95"] = round(float(np.percentile(latencies, 95)), 2)
    return RetrievalEvalRun.objects.create(
        suite=suite, data_path=str(data_path), questions=len(present),
        skipped_not_indexed=skipped, index_version=index.version,
        embedding_model=embedding_model_name(), reranker=reranker_name(), results=results)
