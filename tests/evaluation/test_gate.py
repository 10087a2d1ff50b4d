"""The promotion gate refuses a worse candidate with the reason, promotes one shown to be within
the non-inferiority margin on enough questions, refuses small runs with a sentence saying so,
and records an admin's override. Promoted models are immutable."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User

from evaluation import gate as gate_module
from evaluation.gate import PromotionRefused, check_gate, promote
from evaluation.models import EvalRun, PromotionDecision
from evaluation.suites import EvalItem
from modelsvc.models import ServedModel, ServedModelFrozen
from tests.evaluation.factories import make_labelled_run, make_run


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


def test_it_promotes_a_candidate_within_the_margin_and_retires_the_old_one(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        admin_user: User) -> None:
    make_run(served_model=serving, correct=90, total=100)
    make_run(served_model=candidate, correct=99, total=100)  # 95% CI +2.7 to +15.9 points

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


def test_it_refuses_a_candidate_not_shown_within_the_margin(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        admin_user: User) -> None:
    make_run(served_model=serving, correct=90, total=100)
    make_run(served_model=candidate, correct=89, total=100)  # -1 point, CI -9.6 to +7.6

    with pytest.raises(PromotionRefused, match="reaches below the margin of -2.0 points"):
        promote(candidate, user=admin_user)

    candidate.refresh_from_db()
    assert candidate.status == "candidate"
    [comparison] = PromotionDecision.objects.get().comparisons
    assert comparison["verdict"] == "inconclusive"
    assert comparison["ci_low"] < -0.02 < comparison["ci_high"]
    assert (comparison["margin"], comparison["min_items"]) == (0.02, 100)


def test_a_wider_margin_from_the_settings_lets_the_same_runs_pass(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        settings: Any) -> None:
    settings.EVAL_GATE_MARGIN = 0.10
    make_run(served_model=serving, correct=90, total=100)
    make_run(served_model=candidate, correct=89, total=100)
    gate = check_gate(candidate)
    assert gate.passed and gate.margin == 0.10
    assert gate.comparisons[0]["verdict"] == "non-inferior"


# PubMedQA*'s held-out half as measured for issue 16: 140 yes, 87 no, 23 maybe.
GOLD = ["yes"] * 140 + ["no"] * 87 + ["maybe"] * 23


def test_a_candidate_that_says_yes_to_everything_is_refused_though_non_inferior(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        admin_user: User) -> None:
    make_labelled_run(served_model=serving, gold=GOLD, predicted=["no"] * 250)  # 34.8%
    make_labelled_run(served_model=candidate, gold=GOLD, predicted=["yes"] * 250)  # 56.0%

    with pytest.raises(PromotionRefused) as refused:
        promote(candidate, user=admin_user)

    assert ('not above the 56.0% of answering "yes" to every question' in refused.value.message)
    assert "recall per gold label: maybe 0%, no 0%, yes 100%" in refused.value.message
    assert "train_adapter --balance-labels" in refused.value.message
    candidate.refresh_from_db()
    assert candidate.status == "candidate"
    [comparison] = PromotionDecision.objects.get().comparisons
    assert comparison["verdict"] == "no better than the majority label"
    assert comparison["ci_low"] > 0  # accuracy alone would have called it better
    assert comparison["candidate_labels"]["predicted"] == {"yes": 250}


def test_a_candidate_above_the_majority_baseline_is_promoted(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        admin_user: User) -> None:
    make_labelled_run(served_model=serving, gold=GOLD, predicted=["no"] * 250)
    reads = ["yes"] * 112 + ["no"] * 28 + ["no"] * 61 + ["yes"] * 26 + ["yes"] * 23
    run = make_labelled_run(served_model=candidate, gold=GOLD, predicted=reads)  # 69.2%
    assert run.metrics["headline"]["accuracy_all"]["value"] == pytest.approx(173 / 250)

    decision = promote(candidate, user=admin_user)

    assert decision.promoted and decision.comparisons[0]["verdict"] == "non-inferior"


def test_the_majority_rule_can_be_turned_off(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        settings: Any) -> None:
    settings.EVAL_GATE_ABOVE_MAJORITY = False
    make_labelled_run(served_model=serving, gold=GOLD, predicted=["no"] * 250)
    make_labelled_run(served_model=candidate, gold=GOLD, predicted=["yes"] * 250)
    gate = check_gate(candidate)
    assert gate.passed and gate.comparisons[0]["verdict"] == "non-inferior"


def _limited(run: EvalRun, limit: int) -> EvalRun:
    EvalRun.objects.filter(pk=run.pk).update(limit=limit)
    run.refresh_from_db()
    return run


def test_it_refuses_a_run_below_the_minimum_sample_with_a_sentence_saying_so(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        admin_user: User) -> None:
    _limited(make_run(served_model=serving, correct=4, total=5), 5)
    small = _limited(make_run(served_model=candidate, correct=5, total=5), 5)

    with pytest.raises(PromotionRefused) as refused:
        promote(candidate, user=admin_user)

    sentence = (f"The pubmedqa run {small.pk} scored 5 items; the gate needs at least 100 per "
                "suite. Run the suite without --limit (or with --limit 100 or more).")
    assert sentence in refused.value.message
    decision = PromotionDecision.objects.get()
    assert not decision.gate_passed and not decision.promoted
    candidate.refresh_from_db()
    assert candidate.status == "candidate"


def test_the_minimum_applies_to_a_first_model_with_nothing_to_compare_with(
        gate_on_pubmedqa: None, candidate: ServedModel, settings: Any) -> None:
    settings.EVAL_GATE_MIN_ITEMS = 20
    run = make_run(served_model=candidate, correct=10, total=10)
    gate = check_gate(candidate)
    assert not gate.passed
    assert gate.reasons == [f"The pubmedqa run {run.pk} scored 10 items; the gate needs at "
                            "least 20 per suite. Run it on a data file with at least 20 "
                            "questions (--data)."]


def test_the_serving_models_run_needs_the_minimum_too(
        gate_on_pubmedqa: None, serving: ServedModel, candidate: ServedModel,
        settings: Any) -> None:
    settings.EVAL_GATE_MIN_ITEMS = 50
    old = make_run(served_model=serving, correct=20, total=30, data_sha256="c" * 64)
    make_run(served_model=candidate, correct=60, total=60, data_sha256="c" * 64)
    gate = check_gate(candidate)
    assert not gate.passed
    assert gate.comparisons[0]["verdict"] == "too few items"
    assert f"The pubmedqa run {old.pk} scored 30 items" in gate.reasons[0]


def _reviewed_items(count: int) -> Any:
    items = [EvalItem(item_id=f"review:{n}", question=f"Question {n}?", gold="Answer.")
             for n in range(count)]
    return lambda: (items, "review items, eval split")


def test_the_reviewed_suite_joins_the_gate_once_it_has_enough_items(
        serving: ServedModel, candidate: ServedModel, settings: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert "reviewed" in settings.EVAL_GATE_SUITES  # in the default gate
    settings.EVAL_GATE_SUITES = ["pubmedqa", "reviewed"]
    make_run(served_model=serving, correct=90, total=100)
    make_run(served_model=candidate, correct=99, total=100)

    monkeypatch.setattr(gate_module, "held_out_items", _reviewed_items(40))
    gate = check_gate(candidate)
    assert gate.passed
    assert ("reviewed: not in the gate yet; its held-out split has 40 items and joins the "
            "gate at 100.") in gate.reasons

    monkeypatch.setattr(gate_module, "held_out_items", _reviewed_items(100))
    gate = check_gate(candidate)
    assert not gate.passed
    assert "reviewed: lora-1 has no complete run; run `python manage.py evaluate --suite " \
        "reviewed --model lora-1`." in gate.reasons


def test_a_gate_with_no_suite_it_could_check_refuses(
        candidate: ServedModel, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.EVAL_GATE_SUITES = ["reviewed"]
    monkeypatch.setattr(gate_module, "held_out_items", _reviewed_items(3))
    gate = check_gate(candidate)
    assert not gate.passed
    assert "No gate suite could be checked" in gate.reasons[-1]


def test_a_serving_model_cannot_be_edited(serving: ServedModel) -> None:
    serving.adapter_path = "/adapters/quietly-swapped"
    with pytest.raises(ServedModelFrozen, match="base has been promoted .serving., so its "
                                                 "adapter_path cannot change"):
        serving.save()
    with pytest.raises(ServedModelFrozen):
        ServedModel.objects.filter(pk=serving.pk).update(cost_per_1k_prompt=1)
    serving.refresh_from_db()
    assert (serving.adapter_path, serving.cost_per_1k_prompt) == ("", 0)


def test_a_change_to_a_promoted_model_is_a_new_candidate_row(
        gate_on_pubmedqa: None, serving: ServedModel, admin_user: User) -> None:
    version_2 = ServedModel.objects.create(name="base-v2", base_model="smollm2",
                                           served_name="base-v2", capability="literature",
                                           cost_per_1k_prompt=1)
    assert version_2.status == "candidate"
    version_2.cost_per_1k_prompt = 2  # a candidate is still a draft
    version_2.save()
    make_run(served_model=serving, correct=90, total=100)
    make_run(served_model=version_2, correct=99, total=100)
    promote(version_2, user=admin_user)  # retiring the old row changes only its status
    serving.refresh_from_db()
    assert serving.status == "retired"
    serving.served_name = "renamed"
    with pytest.raises(ServedModelFrozen):
        serving.save()


def test_the_admin_shows_a_promoted_model_read_only(
        serving: ServedModel, candidate: ServedModel, rf: Any, admin_user: User) -> None:
    model_admin = admin.site._registry[ServedModel]
    request = rf.get("/")
    request.user = admin_user
    frozen = {"served_name", "base_model", "adapter_path", "capability",
              "cost_per_1k_prompt", "cost_per_1k_completion"}
    assert frozen <= set(model_admin.get_readonly_fields(request, serving))
    assert not frozen & set(model_admin.get_readonly_fields(request, candidate))
