"""The figures of a run, computed from its per-question rows; pure functions, no database.

Conventions, so figures mean the same thing on every page:
- `accuracy` is over the questions whose answer could be read (correct / (correct + wrong));
  unparseable answers and errors are counted and reported beside it, never folded in.
- `accuracy_all` counts them as not correct (correct / all questions): the conservative figure
  the promotion gate compares, since an unreadable answer helps nobody.
- Intervals are Wilson score intervals at 95%; differences between runs use Newcombe's method
  built on them.
- Where the gold answers are labels (PubMedQA's yes/no/maybe, MIRAGE's options), each block
  also has `labels`: recall per gold label, what the model predicted, balanced accuracy (the
  mean of the recalls) and the majority baseline (answering the commonest gold label to every
  question). A model that says one label to everything scores the majority baseline, which
  accuracy alone hides.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Z_95 = 1.959963984540054
RECALL_KS = (1, 3, 5, 10)
# Gold answers with more distinct values than this are free text, not labels.
MAX_LABELS = 10


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion; (0, 0) for n = 0."""
    if n <= 0:
        return (0.0, 0.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(successes: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, n)
    return {"value": (successes / n) if n else None, "successes": successes, "n": n,
            "ci_low": low, "ci_high": high}


def difference_interval(a_successes: int, a_n: int, b_successes: int, b_n: int,
                        z: float = Z_95) -> tuple[float, float, float]:
    """(a - b, low, high): Newcombe's hybrid score interval for a difference of proportions."""
    if a_n <= 0 or b_n <= 0:
        raise ValueError("both proportions need at least one trial")
    p1, p2 = a_successes / a_n, b_successes / b_n
    l1, u1 = wilson_interval(a_successes, a_n, z)
    l2, u2 = wilson_interval(b_successes, b_n, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return difference, low, high


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = math.ceil(position)
    if lower == upper:
        return float(ordered[lower])
    return float(ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower))


def recall_at_k(gold_ranks: Sequence[int | None], k: int) -> float | None:
    """Share of questions whose gold document was retrieved at rank <= k (one gold per question;
    None = not retrieved)."""
    if not gold_ranks:
        return None
    return sum(1 for rank in gold_ranks if rank is not None and rank <= k) / len(gold_ranks)


@dataclass(frozen=True)
class Row:
    """What the metrics need of one EvalResult (so they can be tested without a database)."""

    item_id: str
    outcome: str  # correct / wrong / unparseable / error
    condition: str = "retrieval"
    subset: str = ""
    gold_rank: int | None = None
    has_gold_pmid: bool = False
    gold_cited: bool | None = None
    cited_passages: int = 0
    supporting_citations: int = 0
    claims: int = 0
    supported_claims: int = 0
    abstained: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_ms: float = 0.0
    score: float | None = None
    gold: str = ""
    predicted: str = ""


def label_metrics(rows: Sequence[Row]) -> dict[str, Any] | None:
    """Per-label recall, predictions and the majority baseline; None unless every row has a
    gold label and there are between 2 and MAX_LABELS of them. Errors count as questions (as
    in `accuracy_all`); an unparseable answer is a miss for its gold label."""
    if not rows or any(not row.gold for row in rows):
        return None
    gold_counts: dict[str, int] = defaultdict(int)
    hits: dict[str, int] = defaultdict(int)
    predicted: dict[str, int] = defaultdict(int)
    for row in rows:
        gold_counts[row.gold] += 1
        if row.outcome == "correct":
            hits[row.gold] += 1
        if row.outcome in ("correct", "wrong") and row.predicted:
            predicted[row.predicted] += 1
    if not 2 <= len(gold_counts) <= MAX_LABELS:
        return None
    recall = {label: proportion(hits[label], n) for label, n in sorted(gold_counts.items())}
    majority = max(sorted(gold_counts), key=lambda label: gold_counts[label])
    parsed = sum(predicted.values())
    top = max(sorted(predicted), key=lambda label: predicted[label]) if parsed else None
    return {
        "gold": dict(sorted(gold_counts.items())),
        "recall": recall,
        "balanced_accuracy": sum(block["value"] for block in recall.values()) / len(recall),
        "predicted": dict(sorted(predicted.items())),
        "top_prediction": ({"label": top, "share": predicted[top] / parsed}
                           if top is not None else None),
        "majority": {"label": majority, **proportion(gold_counts[majority], len(rows))},
    }


def _accuracy_block(rows: Sequence[Row]) -> dict[str, Any]:
    correct = sum(1 for row in rows if row.outcome == "correct")
    wrong = sum(1 for row in rows if row.outcome == "wrong")
    unparseable = sum(1 for row in rows if row.outcome == "unparseable")
    errors = sum(1 for row in rows if row.outcome == "error")
    answered = [row for row in rows if not row.abstained and row.outcome in ("correct", "wrong")]
    return {
        "questions": len(rows),
        "correct": correct,
        "wrong": wrong,
        "unparseable": unparseable,
        "errors": errors,
        "accuracy": proportion(correct, correct + wrong),
        "accuracy_all": proportion(correct, len(rows)),
        "abstention_rate": proportion(sum(1 for row in rows if row.abstained), len(rows)),
        "accuracy_when_answering": proportion(
            sum(1 for row in answered if row.outcome == "correct"), len(answered)),
        "labels": label_metrics(rows),
    }


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def condition_metrics(rows: Sequence[Row], *, recall_ks: Sequence[int] = RECALL_KS
                      ) -> dict[str, Any]:
    metrics = _accuracy_block(rows)
    by_subset: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.subset:
            by_subset[row.subset].append(row)
    metrics["subsets"] = {name: _accuracy_block(subset_rows)
                          for name, subset_rows in sorted(by_subset.items())}

    with_gold = [row for row in rows if row.has_gold_pmid]
    if with_gold:
        ranks = [row.gold_rank for row in with_gold]
        metrics["recall"] = {f"@{k}": recall_at_k(ranks, k) for k in recall_ks}
        cited = [row for row in with_gold if row.gold_cited is not None]
        metrics["gold_cited"] = proportion(sum(1 for row in cited if row.gold_cited),
                                           len(cited))
    cited_total = sum(row.cited_passages for row in rows)
    if cited_total:
        metrics["citation_precision"] = proportion(
            sum(row.supporting_citations for row in rows), cited_total)
    claims_total = sum(row.claims for row in rows)
    if claims_total:
        metrics["claim_support_rate"] = proportion(sum(row.supported_claims for row in rows),
                                                   claims_total)
    scores = [row.score for row in rows if row.score is not None]
    if scores:
        metrics["mean_score"] = _mean(scores)
    latencies = [row.latency_ms for row in rows if row.outcome != "error"]
    metrics["latency_ms"] = {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)}
    metrics["tokens_per_question"] = {
        "prompt": _mean(row.prompt_tokens for row in rows),
        "completion": _mean(row.completion_tokens for row in rows),
    }
    metrics["cost_per_question"] = _mean(row.cost for row in rows)
    metrics["cost_total"] = sum(row.cost for row in rows)
    return metrics


def run_metrics(rows: Sequence[Row]) -> dict[str, Any]:
    """Metrics per condition; the first condition's figures are also the run's headline."""
    by_condition: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_condition[row.condition].append(row)
    conditions = {name: condition_metrics(condition_rows)
                  for name, condition_rows in by_condition.items()}
    headline_name = "retrieval" if "retrieval" in conditions else next(iter(conditions), "")
    result: dict[str, Any] = {"conditions": conditions, "headline_condition": headline_name,
                              "headline": conditions.get(headline_name, {})}
    if {"retrieval", "no_retrieval"} <= conditions.keys():
        result["retrieval_gain"] = retrieval_gain(conditions["retrieval"],
                                                  conditions["no_retrieval"])
    return result


def retrieval_gain(with_retrieval: dict[str, Any], without: dict[str, Any]) -> dict[str, Any]:
    """Accuracy with minus without retrieval, overall and per subset, with Newcombe intervals."""

    def gain(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
        acc_a, acc_b = a["accuracy"], b["accuracy"]
        if not acc_a["n"] or not acc_b["n"]:
            return None
        difference, low, high = difference_interval(acc_a["successes"], acc_a["n"],
                                                    acc_b["successes"], acc_b["n"])
        return {"difference": difference, "ci_low": low, "ci_high": high}

    return {
        "overall": gain(with_retrieval, without),
        "subsets": {name: gain(block, without["subsets"][name])
                    for name, block in with_retrieval["subsets"].items()
                    if name in without["subsets"]},
    }
