"""From a reviewer's correction to the project's own benchmark: the export's eval side is what
`evaluate --suite reviewed` scores, end to end, against the real tiny model server."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from evaluation.models import EvalRun
from review.exports import build_export
from review.services import (
    ClaimEdit,
    enqueue_for_review,
    review_item_claim,
    review_item_decide,
)

pytestmark = [pytest.mark.model_server, pytest.mark.shared_data]


def test_corrected_answers_held_out_by_the_export_are_the_reviewed_suite(
        answered: Any, reviewer: Any, settings: Any, shared_data_dir: Path, tmp_path: Path,
        model_server: dict[str, str], tiny_index: Path) -> None:
    settings.LITERATURE_DATA_DIR = shared_data_dir
    settings.EXPORT_EVAL_PERCENT = 100  # every item on the eval side of the split
    settings.EVAL_MAX_TOKENS = 24
    questions = ["Does low-dose aspirin prevent a second stroke?",
                 "Is metformin safe in stage 3 chronic kidney disease?"]
    for question in questions:
        item = enqueue_for_review(consultation_id=answered(question, supported=(False,)).pk)
        review_item_claim(item_id=item.pk, reviewer=reviewer)
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind="correct",
                           claims=[ClaimEdit("Aspirin lowers recurrent stroke by 22%.", [1])])
    exported = build_export(fmt="eval", out_dir=tmp_path)
    assert exported.counts["exported"] == 2

    out = StringIO()
    call_command("evaluate", "--suite", "reviewed", "--json", stdout=out)
    summary = json.loads(out.getvalue())

    run = EvalRun.objects.get(pk=summary["id"])
    assert run.status == "complete", run.error_message
    assert run.total == run.done == 2
    results = list(run.results.order_by("item_id"))
    assert [r.question for r in results] == questions
    for result in results:
        assert result.gold == "Aspirin lowers recurrent stroke by 22% [1]."
        assert result.gold_pmids == ["90000001"]
        assert set(result.extra) >= {"claim_overlap", "citation_agreement"}
        assert result.score is not None and 0 <= result.score <= 1
        assert result.passages and result.prompt_tokens > 0
    assert "eval split" in run.data_path
