"""Fixtures for the training tests: reviewed answers exported the way reviewers produce them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from review.exports import build_export
from review.services import (
    ClaimEdit,
    enqueue_for_review,
    review_item_claim,
    review_item_decide,
)
from tests.review.conftest import answered, review_settings  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def everything_in_train(settings: Any, shared_data_dir: Path) -> None:
    settings.LITERATURE_DATA_DIR = shared_data_dir
    settings.EXPORT_EVAL_PERCENT = 0


@pytest.fixture(autouse=True)
def training_dirs(settings: Any, tmp_path: Path) -> None:
    settings.TRAINING_DIR = tmp_path / "training"
    settings.TRAINING_SERVED_DIR = tmp_path / "training" / "served"


@pytest.fixture
def reviewed(answered: Callable[..., Any], reviewer: Any) -> Callable[..., Any]:  # noqa: F811
    def make(question: str, kind: str = "approve", **extra: Any) -> Any:
        item = enqueue_for_review(consultation_id=answered(question, supported=(False,),
                                                           **extra).pk)
        review_item_claim(item_id=item.pk, reviewer=reviewer)
        claims = [ClaimEdit("Aspirin lowers recurrent stroke by 22% in pooled trials.", [1])]
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind=kind,
                           claims=claims if kind == "correct" else None,
                           error_categories=["wrong_fact"] if kind != "approve" else None)
        return item
    return make


@pytest.fixture
def exported(tmp_path: Path) -> Callable[..., Path]:
    def make(*formats: str) -> Path:
        out = tmp_path / "export"
        for fmt in formats or ("sft", "dpo"):
            build_export(fmt=fmt, out_dir=out)
        return out
    return make
