"""The claims benchmark: does the claim check give each claim/passage pair the right verdict?

Files are JSON Lines of {"claim", "passage", "label", "kind"}, built here from PubMedQA's
expert set (`build_pubmedqa_claims`: each conclusion against its abstract's other sections) or
from MEDLINE articles of the verifier's held-out split (`build_medline_claims`), with the
changes of `modelsvc.claim_changes`. The verifier is trained on MEDLINE's train split only,
never on PubMedQA (its PMIDs are excluded) nor on the held-out split, so scored items are
never trained on.

A run answers each pair with `modelsvc.verification.score_claims` (the configured engine) and
reports per-label precision and recall with Wilson intervals, a confusion matrix, recall per
kind of change, and latency.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.items import EvalError, EvalItem
from evaluation.metrics import percentile, proportion
from evaluation.models import EvalResult, EvalRun
from modelsvc.citations import ParsedClaim
from modelsvc.claim_changes import (
    LABELS,
    ClaimPair,
    nearest_topics,
    pairs_for_abstract,
)
from modelsvc.verification import score_claims
from modelsvc.verifier import describe_engine
from modelsvc.verifier_training import HELD_OUT, medline_claim_pairs
from retrieval.embedding import embed_texts

SOURCES = ("pubmedqa", "medline")


def build_pubmedqa_claims(path: Path, *, seed: int = 0,
                          contradictions_per_sentence: int = 2) -> list[ClaimPair]:
    """Pairs from pqal_dev.json: the LONG_ANSWER (conclusion) against CONTEXTS; not_found
    claims are the conclusion of the item closest in topic (TF-IDF)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EvalError(f"Cannot read {path} as PubMedQA JSON ({error}).") from error
    pmids = sorted(pmid for pmid, item in data.items()
                   if item.get("LONG_ANSWER") and item.get("CONTEXTS"))
    neighbours = nearest_topics([f"{data[p]['QUESTION']} {data[p]['LONG_ANSWER']}"
                                 for p in pmids])
    rng = random.Random(seed)
    pairs: list[ClaimPair] = []
    for pmid, neighbour in zip(pmids, neighbours, strict=True):
        other = pmids[neighbour]
        pairs += pairs_for_abstract(
            pmid, data[pmid]["LONG_ANSWER"], " ".join(data[pmid]["CONTEXTS"]), rng=rng,
            other_conclusion=data[other]["LONG_ANSWER"] if other != pmid else "",
            other_source=other, contradictions_per_sentence=contradictions_per_sentence)
    return pairs


def build_medline_claims(data_dir: Path, *, limit: int | None = 500,
                         seed: int = 0) -> list[ClaimPair]:
    """Pairs from articles of the verifier's held-out split (never trained on)."""
    return medline_claim_pairs(data_dir, split=HELD_OUT, limit=limit, seed=seed)


# --- running ------------------------------------------------------------------------------


def answer_claim(context: Any, item: EvalItem, condition: str) -> dict[str, Any]:
    """One pair through the claim check, as the answering pipeline calls it: the claim cites
    passage [1]. The fields of its EvalResult."""
    passage = str(item.reference.get("passage", ""))
    (support,) = score_claims([ParsedClaim(item.question, [1])], {1: passage},
                              embed=embed_texts)
    return {
        "predicted": support.verdict,
        "outcome": (EvalResult.Outcome.CORRECT if support.verdict == item.gold
                    else EvalResult.Outcome.WRONG),
        "score": support.score,
        "passages": [{"rank": 1, "text": passage}],
        "claims": [{"text": item.question, "citations": [1], "support_score": support.score,
                    "supported": support.supported, "verdict": support.verdict}],
        "answer_text": support.reason,
        "extra": {"kind": item.subset, "source": item.reference.get("source", "")},
    }


def record_engine(run: EvalRun) -> None:
    """Name the engine that will judge the run's pairs (the run's `model_name`)."""
    run.model_name = describe_engine()[:200]
    run.options = {**run.options, "verifier": run.model_name}
    run.save(update_fields=["model_name", "options", "updated_at"])


def claim_metrics(rows: Sequence[tuple[str, str, str, float]]) -> dict[str, Any]:
    """(gold, predicted, kind, latency_ms) per item -> per-label precision and recall with
    Wilson intervals, the confusion matrix (rows gold, columns predicted), recall per kind."""
    confusion = Counter((gold, predicted) for gold, predicted, _, _ in rows)
    per_label = {}
    for label in LABELS:
        hits = confusion[(label, label)]
        predicted_as = sum(n for (_, p), n in confusion.items() if p == label)
        gold_as = sum(n for (g, _), n in confusion.items() if g == label)
        per_label[label] = {"precision": proportion(hits, predicted_as),
                            "recall": proportion(hits, gold_as)}
    kinds: dict[str, list[bool]] = {}
    for gold, predicted, kind, _ in rows:
        kinds.setdefault(kind or "-", []).append(gold == predicted)
    latencies = [latency for *_, latency in rows]
    correct = sum(1 for gold, predicted, _, _ in rows if gold == predicted)
    return {
        "items": len(rows),
        "accuracy": proportion(correct, len(rows)),
        "labels": per_label,
        "confusion": {"labels": list(LABELS), "matrix": [
            [confusion[(gold, predicted)] for predicted in LABELS] for gold in LABELS]},
        "kinds": {kind: proportion(sum(ok), len(ok)) for kind, ok in sorted(kinds.items())},
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
    }


def run_claim_metrics(run: EvalRun) -> dict[str, Any]:
    rows = [(r.gold, r.predicted, r.subset, float(r.latency_ms)) for r in
            run.results.only("gold", "predicted", "subset", "latency_ms")]
    return {**claim_metrics(rows), "engine": run.model_name}


def by_label(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The --json figure: {label: {precision, recall, their intervals, counts}}."""
    figures = {}
    for label in LABELS:
        block = metrics.get("labels", {}).get(label, {})
        precision, recall = block.get("precision", {}), block.get("recall", {})
        figures[label] = {
            "precision": precision.get("value"), "recall": recall.get("value"),
            "precision_ci": [precision.get("ci_low"), precision.get("ci_high")],
            "recall_ci": [recall.get("ci_low"), recall.get("ci_high")],
            "predicted": precision.get("n"), "gold": recall.get("n")}
    return figures


def _figure(block: dict[str, Any]) -> str:
    if not block or block.get("value") is None:
        return "-"
    return (f"{block['value']:.3f} [{block['ci_low']:.3f}, {block['ci_high']:.3f}] "
            f"({block['successes']}/{block['n']})")


def format_claim_summary(run: EvalRun) -> str:
    metrics = run.metrics
    lines = [f"Run {run.pk} (claims, {run.status}) with {run.model_name} in "
             f"{run.wall_seconds or 0:.1f} s: {metrics.get('items', 0)} pairs, accuracy "
             f"{_figure(metrics.get('accuracy', {}))}"]
    for label, block in metrics.get("labels", {}).items():
        lines.append(f"  {label:<13} precision {_figure(block['precision'])}  "
                     f"recall {_figure(block['recall'])}")
    confusion = metrics.get("confusion")
    if confusion:
        lines.append("  confusion (rows gold, columns predicted: "
                     + ", ".join(confusion["labels"]) + ")")
        for label, row in zip(confusion["labels"], confusion["matrix"], strict=True):
            lines.append(f"    {label:<13} " + " ".join(f"{n:>6}" for n in row))
    kinds = metrics.get("kinds") or {}
    if kinds:
        lines.append("  right per kind: " + ", ".join(
            f"{kind} {block['value']:.3f} (n={block['n']})" for kind, block in kinds.items()
            if block.get("value") is not None))
    latency = metrics.get("latency_ms") or {}
    if latency.get("p50") is not None:
        lines.append(f"  latency per pair p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms")
    return "\n".join(lines)
