"""Tune the rescoring stage on one half of the PubMedQA questions; report on the other half.

    .venv/bin/python bench/tune_rescore.py [--data ../shared/data/pubmedqa/pqal_dev.json]
                                           [--show-misses N]

Reads the *current* index (VAR_DIR as configured) and prints figures; asserts nothing and
changes nothing. Questions are split by a hash of their PMID, so the split is the same on
every machine: the "tune" half picks the settings, the "held-out" half reports them, and
settings are chosen without looking at the held-out half. The figures for the shipped
settings come from `manage.py eval_retrieval`; this script is how those settings were chosen.

Grid: the RRF constant, how many fused articles are rescored, how scores are normalised
(min-max or z-score over the candidates), and the weights of a convex combination of three
signals: the cosine of the query with each chunk, each chunk's BM25, and a third, either the
article's reciprocal-rank-fusion score or the BM25 of the whole article as one document. An
article scores as its best chunk plus its third term. (A BM25 title field was tried too and
dropped: the PubMedQA abstracts carry no titles, so it can only favour the distractors.)
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RRF_KS = (20, 60, 100)
DEPTHS = (20, 50, 100)
STEPS = 20  # weights in steps of 1/20
WEIGHTS = [(d / STEPS, b / STEPS, (STEPS - d - b) / STEPS)
           for d in range(STEPS + 1) for b in range(STEPS + 1 - d)]
STEP = 1 / STEPS


@dataclass
class Candidate:
    article: int
    bm25_rank: int | None
    dense_rank: int | None
    cosine: np.ndarray  # per chunk of the article
    bm25: np.ndarray
    article_bm25: float  # BM25 of the whole article (title + every chunk) as one document


@dataclass
class Question:
    pmid: str
    text: str
    gold: int
    candidates: list[Candidate]


@dataclass
class Prepared:
    """One question's top `depth` fused candidates as flat arrays, normalised over them."""

    articles: np.ndarray
    cosine: np.ndarray  # per chunk
    bm25: np.ndarray  # per chunk
    starts: np.ndarray  # first chunk of each candidate
    extra: dict[str, np.ndarray]  # per candidate: "rrf" score, "article bm25"
    gold: int  # index into articles, or -1


def in_tune_half(pmid: str) -> bool:
    return hashlib.sha256(pmid.encode()).digest()[0] % 2 == 0


def collect(data: Path, limit: int | None) -> list[Question]:
    import django

    django.setup()
    from retrieval import embedding
    from retrieval import search as stages
    from retrieval.evaluation import load_pubmedqa_questions
    from retrieval.index_store import get_index
    from retrieval.models import Article

    questions = load_pubmedqa_questions(data)[:limit]
    index = get_index()
    if index.article_bm25 is None:
        sys.exit(f"index {index.version} predates the article-level BM25; rebuild it with "
                 "`python manage.py build_index --force` (no embedding work) and rerun.")
    article_rows = {int(article): row for row, article in enumerate(index.article_rows)}
    ids = dict(Article.objects.filter(pmid__in=[p for p, _q in questions])
               .values_list("pmid", "id"))
    collected = []
    for pmid, text in questions:
        if pmid not in ids:
            continue
        query = " ".join(text.split())
        bm25_scores = stages._bm25_scores(index, query)
        article_scores = stages._article_bm25_scores(index, query)
        bm25 = stages._bm25_stage(index, bm25_scores, None, stages.STAGE_DEPTH)
        vector = np.asarray(embedding.embed_query(query), dtype=np.float32)
        dense = stages._collapse(index, *stages.dense_search(index, vector, stages.STAGE_DEPTH,
                                                             None))
        candidates = []
        for article in sorted(set(bm25.by_article) | set(dense.by_article)):
            positions = stages._article_positions(index, article)
            cosine = np.asarray(index.vectors[positions], dtype=np.float32) @ vector
            lexical_scores = bm25_scores[positions] if bm25_scores is not None else \
                np.zeros(positions.size, dtype=np.float32)
            candidates.append(Candidate(
                article, bm25.by_article.get(article, (None,))[0],
                dense.by_article.get(article, (None,))[0], cosine,
                lexical_scores.astype(np.float32),
                float(article_scores[article_rows[article]]) if article_scores is not None
                else 0.0))
        collected.append(Question(pmid, query, ids[pmid], candidates))
    print(f"index {index.version}: {index.size} chunks; {len(collected)} questions "
          f"({sum(in_tune_half(q.pmid) for q in collected)} tune, "
          f"{sum(not in_tune_half(q.pmid) for q in collected)} held out)")
    return collected


def minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def zscore(values: np.ndarray) -> np.ndarray:
    spread = float(values.std())
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


NORMALISERS = {"minmax": minmax, "zscore": zscore}
THIRD_SIGNALS = ("rrf", "article bm25")


def rrf_score(candidate: Candidate, rrf_k: int) -> float:
    return (1.0 / (rrf_k + candidate.bm25_rank) if candidate.bm25_rank else 0.0) + \
        (1.0 / (rrf_k + candidate.dense_rank) if candidate.dense_rank else 0.0)


def fused_order(question: Question, rrf_k: int) -> list[Candidate]:
    return sorted(question.candidates, key=lambda c: -rrf_score(c, rrf_k))


def prepare(question: Question, rrf_k: int, depth: int, normaliser: str) -> Prepared:
    normalise = NORMALISERS[normaliser]
    top = fused_order(question, rrf_k)[:depth]
    articles = np.array([c.article for c in top])
    sizes = np.array([c.cosine.size for c in top])
    gold = np.flatnonzero(articles == question.gold)
    return Prepared(articles, normalise(np.concatenate([c.cosine for c in top])),
                    normalise(np.concatenate([c.bm25 for c in top])),
                    np.concatenate([[0], np.cumsum(sizes)[:-1]]),
                    {"rrf": normalise(np.array([rrf_score(c, rrf_k) for c in top],
                                               dtype=np.float32)),
                     "article bm25": normalise(np.array([c.article_bm25 for c in top],
                                                        dtype=np.float32))},
                    int(gold[0]) if gold.size else -1)


def rank_of_gold(prepared: Prepared, weights: tuple[float, float, float], third: str) -> int:
    """1-based rank after rescoring (ties keep the fused order); 10**6 when not a candidate."""
    if prepared.gold < 0:
        return 10 ** 6
    dense_weight, bm25_weight, third_weight = weights
    chunk = dense_weight * prepared.cosine + bm25_weight * prepared.bm25
    scores = np.maximum.reduceat(chunk, prepared.starts)
    if third_weight:
        scores = scores + third_weight * prepared.extra[third]
    gold = scores[prepared.gold]
    return int(np.count_nonzero(scores > gold) +
               np.count_nonzero(scores[:prepared.gold] == gold)) + 1


def fused_rank(question: Question, rrf_k: int) -> int:
    order = [c.article for c in fused_order(question, rrf_k)]
    return order.index(question.gold) + 1 if question.gold in order else 10 ** 6


def metrics(ranks: list[int]) -> dict[str, float]:
    array = np.asarray(ranks)
    return {"R@1": float(np.mean(array <= 1)), "R@5": float(np.mean(array <= 5)),
            "R@10": float(np.mean(array <= 10)),
            "MRR@10": float(np.mean(np.where(array <= 10, 1.0 / array, 0.0)))}


def line(name: str, values: dict[str, float]) -> str:
    return f"  {name:<48}" + "  ".join(f"{k} {v:.3f}" for k, v in values.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "SHARED_DATA_DIR", ROOT.parent / "shared" / "data")) / "pubmedqa" / "pqal_dev.json")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--show-misses", type=int, default=0, metavar="N",
                        help="print N tune-half questions the best setting misses at rank 1")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found; pass --data with the PubMedQA questions file.")
    questions = collect(args.data, args.limit)
    halves = {"tune": [q for q in questions if in_tune_half(q.pmid)],
              "held-out": [q for q in questions if not in_tune_half(q.pmid)]}
    prepared = {(half, rrf_k, depth, normaliser): [prepare(q, rrf_k, depth, normaliser)
                                                   for q in halves[half]]
                for half in halves for rrf_k in RRF_KS for depth in DEPTHS
                for normaliser in NORMALISERS}

    def score(half: str, rrf_k: int, depth: int, normaliser: str,
              weights: tuple[float, float, float], third: str) -> dict[str, float]:
        return metrics([rank_of_gold(p, weights, third)
                        for p in prepared[(half, rrf_k, depth, normaliser)]])

    from retrieval.search import RERANK_DEPTH, RESCORE_WEIGHTS, RRF_K
    shipped = (RRF_K, RERANK_DEPTH, "minmax", RESCORE_WEIGHTS, "article bm25")

    def distance(setting: tuple) -> float:  # ties go to the setting nearest the shipped one
        return sum(a != b for a, b in zip(setting[:3], shipped[:3], strict=True)) + \
            sum(abs(a - b) for a, b in zip(setting[3], shipped[3], strict=True))

    def best(grid: list[tuple]) -> tuple:
        tuned = {setting: score("tune", *setting) for setting in grid}
        return max(grid, key=lambda s: (tuned[s]["R@1"] + tuned[s]["R@5"], tuned[s]["MRR@10"],
                                        -distance(s)))

    two_signals = [s for s in itertools.product(RRF_KS, DEPTHS, NORMALISERS, WEIGHTS, ["rrf"])
                   if s[3][2] == 0]
    chosen = {"shipped": shipped,
              f"best of {len(two_signals)} (cosine + chunk BM25)": best(two_signals)}
    for third in THIRD_SIGNALS:
        grid = [s for s in itertools.product(RRF_KS, DEPTHS, NORMALISERS, WEIGHTS, [third])
                if s[3][2] > 0]
        chosen[f"best of {len(grid)} (cosine + chunk BM25 + {third})"] = best(grid)
    for half in halves:
        print(line(f"RRF only, k={RRF_K}, {half} ({len(halves[half])} q)",
                   metrics([fused_rank(q, RRF_K) for q in halves[half]])))
    print("best on the tune half by R@1 + R@5, then MRR@10, then nearness to shipped:")
    for name, (rrf_k, depth, normaliser, weights, third) in chosen.items():
        print(f"{name}: rrf_k={rrf_k} depth={depth} {normaliser} "
              f"weights (cosine, chunk bm25, {third})={weights}")
        for half in halves:
            print(line(f"{half}", score(half, rrf_k, depth, normaliser, weights, third)))
    overall = max(chosen.values(), key=lambda s: (
        score("tune", *s)["R@1"] + score("tune", *s)["R@5"], score("tune", *s)["MRR@10"]))
    rrf_k, depth, normaliser, weights, third = overall
    print(f"neighbourhood of the best on the tune half ({overall}):")
    for neighbour in WEIGHTS:
        if sum(abs(a - b) for a, b in zip(neighbour, weights, strict=True)) <= 2 * STEP + 1e-9:
            print(line(f"{neighbour}", score("tune", rrf_k, depth, normaliser, neighbour, third)))
    if args.show_misses:
        show_misses(halves["tune"], overall, args.show_misses)


def show_misses(questions: list[Question], setting: tuple, count: int) -> None:
    """Tune-half questions not first with `setting` (the held-out half stays unseen)."""
    rrf_k, depth, normaliser, weights, third = setting
    print(f"tune-half questions not at rank 1 with {setting}:")
    for question in questions:
        rank = rank_of_gold(prepare(question, rrf_k, depth, normaliser), weights, third)
        if rank == 1:
            continue
        if count <= 0:
            break
        count -= 1
        gold = next((c for c in question.candidates if c.article == question.gold), None)
        print(f"- PMID {question.pmid}: rank {rank}; gold bm25 rank "
              f"{gold.bm25_rank if gold else '-'}, dense rank {gold.dense_rank if gold else '-'}"
              f": {question.text[:90]}")


if __name__ == "__main__":
    main()
