"""The promotion gate refuses a worse candidate with the reason, allows one not worse, and
records an admin's override."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from evaluation.gate import PromotionRefused, check_gate, promote
from evaluation.models import PromotionDecision
from modelsvc.models import ServedModel
from tests.evaluation.factories import make_run


@pytest.fixture
def gate_on_pubmedqa(settings: Any) -> None:
    settings.EVAL_GATE_SUITES = ["pubmedqa"]


@pytest.fixture
def serving(db: None) -> ServedModel:
    return ServedModel.objects.create(name="base", base_model="smollm2", served_name="base",
                                      capability="literature", status="serving")


@pytest.fixture
def candidate(db: None) -> ServedModel:
    return ServedModel.objects.create(name="lora-1", base_model="smollm2",
                                      served_name="lora-1", adapter_path="/adapters/1",
                                      capability="literature")


def test_it_refuses_a_candidate_worse_beyond_the_interval(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        admin_user: User) -> None:
    make_run(served_model=serving, correct=90, total=100)
    make_run(served_model=candidate, correct=60, total=100)

    with pytest.raises(PromotionRefused, match="below zero beyond the confidence interval"):
        promote(candidate, user=admin_user)

    candidate.refresh_from_db()
    serving.refresh_from_db()
    assert (candidate.status, serving.status) == ("candidate", "serving")
    decision = PromotionDecision.objects.get()
    assert not decision.gate_passed and not decision.promoted
    assert decision.comparisons[0]["verdict"] == "worse"
    assert decision.comparisons[0]["ci_high"] < 0


def test_it_promotes_a_candidate_not_worse_and_retires_the_old_one(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        admin_user: User) -> None:
    make_run(served_model=serving, correct=90, total=100)
    make_run(served_model=candidate, correct=85, total=100)  # -5 points, CI spans zero

    decision = promote(candidate, user=admin_user)

    candidate.refresh_from_db()
    serving.refresh_from_db()
    assert (candidate.status, serving.status) == ("serving", "retired")
    assert decision.gate_passed and decision.promoted and not decision.overridden
    assert decision.decided_by == admin_user and decision.compared_with == serving


def test_an_admin_override_is_recorded_with_its_reason(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        admin_user: User) -> None:
    make_run(served_model=serving, correct=90, total=100)
    make_run(served_model=candidate, correct=60, total=100)

    decision = promote(candidate, user=admin_user, override=True,
                       override_reason="Safety fix; accuracy regression accepted until v2")

    candidate.refresh_from_db()
    assert candidate.status == "serving"
    assert decision.overridden and not decision.gate_passed
    assert decision.override_reason.startswith("Safety fix")


def test_without_runs_it_says_which_command_to_run(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel) -> None:
    gate = check_gate(candidate)
    assert not gate.passed
    assert "evaluate --suite pubmedqa --model lora-1" in gate.reasons[0]


def test_runs_on_different_data_are_not_compared(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel) -> None:
    make_run(served_model=serving, correct=50, total=100)
    make_run(served_model=candidate, correct=90, total=100, data_sha256="b" * 64)
    gate = check_gate(candidate)
    assert not gate.passed
    assert gate.comparisons[0]["verdict"] == "not comparable"
