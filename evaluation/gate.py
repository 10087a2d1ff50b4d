"""The promotion gate: a candidate model or adapter moves to `serving` only when its latest runs
on the gate suites are not worse than the serving model's beyond the confidence interval.

"Worse beyond the interval": the 95% Newcombe interval of (candidate - serving) accuracy lies
wholly below zero. Accuracy here is `accuracy_all` (unparseable answers count as not correct),
the conservative figure. Runs must be on the same data (same hash) to be compared at all.
An admin may override a refusal with a reason; every decision is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from evaluation.metrics import difference_interval
from evaluation.models import EvalRun, PromotionDecision

DEFAULT_GATE_SUITES = ("pubmedqa", "mirage")


class PromotionRefused(Exception):
    def __init__(self, message: str, decision: PromotionDecision) -> None:
        super().__init__(message)
        self.message = message
        self.decision = decision


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    serving: Any = None


def gate_suites() -> list[str]:
    return list(getattr(settings, "EVAL_GATE_SUITES", DEFAULT_GATE_SUITES))


def latest_run(served_model: Any, suite: str) -> EvalRun | None:
    return (EvalRun.objects.filter(served_model=served_model, suite=suite,
                                   status=EvalRun.Status.COMPLETE)
            .order_by("-finished_at", "-id").first())


def _accuracy(run: EvalRun) -> dict[str, Any]:
    return dict((run.metrics.get("headline") or {}).get("accuracy_all") or {})


def compare_runs(candidate: EvalRun, serving: EvalRun) -> dict[str, Any]:
    """The gate's comparison of two runs of one suite: comparable? worse beyond the CI?"""
    a, b = _accuracy(candidate), _accuracy(serving)
    comparison: dict[str, Any] = {
        "suite": candidate.suite, "candidate_run": candidate.pk, "serving_run": serving.pk,
        "candidate_accuracy": a.get("value"), "serving_accuracy": b.get("value"),
        "notes": []}
    if candidate.data_sha256 != serving.data_sha256 or candidate.limit != serving.limit:
        comparison.update(verdict="not comparable", reason=(
            f"{candidate.suite}: run {candidate.pk} and run {serving.pk} used different "
            "data (file hash or --limit differ); run both on the same data."))
        return comparison
    if not a.get("n") or not b.get("n"):
        comparison.update(verdict="not comparable",
                          reason=f"{candidate.suite}: a run has no scored questions.")
        return comparison
    difference, low, high = difference_interval(a["successes"], a["n"], b["successes"],
                                                b["n"])
    comparison.update(difference=difference, ci_low=low, ci_high=high)
    for name in ("index_version", "prompt_version", "embedding_model"):
        if getattr(candidate, name) != getattr(serving, name):
            comparison["notes"].append(f"{name} differs ({getattr(candidate, name) or '-'} vs "
                                       f"{getattr(serving, name) or '-'})")
    if high < 0:
        comparison.update(verdict="worse", reason=(
            f"{candidate.suite}: accuracy {a['value']:.1%} vs the serving model's "
            f"{b['value']:.1%}; the difference {difference:+.1%} (95% CI {low:+.1%} to "
            f"{high:+.1%}) is below zero beyond the confidence interval."))
    else:
        comparison.update(verdict="not worse", reason=(
            f"{candidate.suite}: accuracy {a['value']:.1%} vs {b['value']:.1%}, difference "
            f"{difference:+.1%} (95% CI {low:+.1%} to {high:+.1%})."))
    return comparison


def check_gate(candidate: Any) -> GateResult:
    from modelsvc.router import serving_model_for

    serving = serving_model_for(candidate.capability)
    if serving is not None and serving.pk == candidate.pk:
        return GateResult(False, [f"{candidate.name} is already serving."], serving=serving)
    result = GateResult(True, serving=serving)
    for suite in gate_suites():
        mine = latest_run(candidate, suite)
        if mine is None:
            result.passed = False
            result.reasons.append(
                f"{suite}: {candidate.name} has no complete run; run `python manage.py "
                f"evaluate --suite {suite} --model {candidate.name}`.")
            continue
        if serving is None:
            result.reasons.append(f"{suite}: no model serves {candidate.capability} yet; "
                                  f"nothing to compare run {mine.pk} with.")
            continue
        theirs = latest_run(serving, suite)
        if theirs is None:
            result.passed = False
            result.reasons.append(
                f"{suite}: the serving model {serving.name} has no complete run to compare "
                f"with; run `python manage.py evaluate --suite {suite} --model {serving.name}"
                f"{f' --limit {mine.limit}' if mine.limit else ''}`.")
            continue
        comparison = compare_runs(mine, theirs)
        result.comparisons.append(comparison)
        result.reasons.append(comparison["reason"])
        if comparison["verdict"] != "not worse":
            result.passed = False
    return result


def promote(candidate: Any, *, user: Any, override: bool = False,
            override_reason: str = "") -> PromotionDecision:
    """Move a candidate to serving if the gate passes (or an admin overrides it, with a
    reason); the previous serving model of the capability is retired. Raises
    PromotionRefused (with the stored decision) otherwise."""
    from modelsvc.models import ServedModel

    if override and not override_reason.strip():
        raise ValueError("An override needs a reason.")
    with transaction.atomic():
        candidate = ServedModel.objects.select_for_update().get(pk=candidate.pk)
        gate = check_gate(candidate)
        allowed = candidate.status == ServedModel.Status.CANDIDATE and (gate.passed or override)
        reasons = list(gate.reasons)
        if candidate.status != ServedModel.Status.CANDIDATE:
            reasons.insert(0, f"{candidate.name} is {candidate.status}, not a candidate.")
        decision = PromotionDecision.objects.create(
            served_model=candidate, compared_with=gate.serving, decided_by=user,
            gate_passed=gate.passed, promoted=allowed, overridden=allowed and not gate.passed,
            override_reason=override_reason.strip() if override else "", reasons=reasons,
            comparisons=gate.comparisons)
        if allowed:
            now = timezone.now()
            ServedModel.objects.filter(capability=candidate.capability,
                                       status=ServedModel.Status.SERVING).exclude(
                pk=candidate.pk).update(status=ServedModel.Status.RETIRED, updated_at=now)
            candidate.status = ServedModel.Status.SERVING
            candidate.save(update_fields=["status", "updated_at"])
    if not allowed:
        raise PromotionRefused("Promotion refused: " + " ".join(reasons), decision)
    return decision


def admin_promote_action(modeladmin: Any, request: Any, queryset: Any) -> None:
    """Admin action for ServedModelAdmin.actions: promote through the gate, report each."""
    from django.contrib import messages

    for candidate in queryset:
        try:
            promote(candidate, user=request.user)
        except PromotionRefused as refused:
            modeladmin.message_user(request, f"{candidate.name}: {refused.message}",
                                    messages.ERROR)
        else:
            modeladmin.message_user(request, f"{candidate.name} is now serving.",
                                    messages.SUCCESS)


admin_promote_action.short_description = (  # type: ignore[attr-defined]
    "Promote to serving (through the evaluation gate)")
