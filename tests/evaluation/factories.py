"""Runs with hand-made results, for the gate and the pages (no model needed)."""

from __future__ import annotations

from typing import Any

from evaluation.harness import compute_metrics
from evaluation.models import EvalResult, EvalRun


def make_labelled_run(*, served_model: Any, gold: list[str], predicted: list[str],
                      data_sha256: str = "a" * 64) -> EvalRun:
    """A PubMedQA run whose questions have these gold labels and these answers ("" for an
    unparseable one)."""
    run = EvalRun.objects.create(suite="pubmedqa", served_model=served_model,
                                 model_name=served_model.served_name, data_sha256=data_sha256,
                                 status=EvalRun.Status.COMPLETE, index_version="idx-1",
                                 prompt_version="answer-v1+eval-v1", total=len(gold),
                                 done=len(gold))
    EvalResult.objects.bulk_create([
        EvalResult(run=run, item_id=f"q{number}", question=f"Question {number}?", gold=want,
                   predicted=said, outcome=("unparseable" if not said else
                                            "correct" if said == want else "wrong"))
        for number, (want, said) in enumerate(zip(gold, predicted, strict=True))])
    run.metrics = compute_metrics(run)
    run.save(update_fields=["metrics"])
    return run


def make_run(*, suite: str = "pubmedqa", served_model: Any = None, correct: int, total: int,
             data_sha256: str = "a" * 64, outcomes: list[str] | None = None) -> EvalRun:
    run = EvalRun.objects.create(suite=suite, served_model=served_model,
                                 model_name=served_model.served_name if served_model else "m",
                                 data_sha256=data_sha256, status=EvalRun.Status.COMPLETE,
                                 index_version="idx-1", prompt_version="answer-v1+eval-v1",
                                 total=total, done=total)
    outcomes = outcomes or ["correct"] * correct + ["wrong"] * (total - correct)
    EvalResult.objects.bulk_create([
        EvalResult(run=run, item_id=f"q{number}", question=f"Question {number}?", gold="yes",
                   predicted="yes" if outcome == "correct" else "no", outcome=outcome)
        for number, outcome in enumerate(outcomes)])
    run.metrics = compute_metrics(run)
    run.save(update_fields=["metrics"])
    return run
