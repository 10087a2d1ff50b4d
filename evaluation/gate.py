"""The promotion gate: a candidate model or adapter moves to `serving` only when, on every gate
suite, its latest run shows it is not worse than the serving model's by more than a margin.

Non-inferiority: the lower end of the 95% Newcombe interval of (candidate - serving)
accuracy must lie above -EVAL_GATE_MARGIN (0.02 = 2 points). A candidate that merely is not
*shown* to be worse does not pass: too few questions give an interval wide enough to hide any
regression, so each run also needs EVAL_GATE_MIN_ITEMS scored questions (a `--limit 5` run is
refused with a sentence saying so). Accuracy here is `accuracy_all` (unparseable answers count
as not correct), the conservative figure. On suites whose answers are labels, a candidate must
also score above the majority baseline (EVAL_GATE_ABOVE_MAJORITY): a model that answers "yes"
to everything matches the always-"yes" accuracy and may well be non-inferior to a base model
that answers "no" to everything, yet it has learnt nothing of the task. Runs must be on the
same data (same hash) to be compared at all. The reviewed suite counts once the review queue's
held-out split has enough items. An admin may override a refusal with a reason; every
decision is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.utils import timezone

from evaluation.metrics import difference_interval
from evaluation.models import EvalRun, PromotionDecision
from evaluation.reviewed import held_out_items
from evaluation.suites import EvalError
from modelsvc.models import ServedModel
from modelsvc.router import serving_model_for


class PromotionRefused(Exception):
    def __init__(self, message: str, decision: PromotionDecision) -> None:
        super().__init__(message)
        self.message = message
        self.decision = decision


# Grows with the review queue: it joins the gate once it is big enough to say something.
GROWING_SUITES = ("reviewed",)


@dataclass
class GateResult:
    passed: bool
    min_items: int
    margin: float
    reasons: list[str] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    serving: Any = None


def gate_suites() -> list[str]:
    return list(settings.EVAL_GATE_SUITES)


def gate_rules() -> dict[str, Any]:
    """What the gate asks, for the pages that show its verdict."""
    return {"suites": gate_suites(), "min_items": settings.EVAL_GATE_MIN_ITEMS,
            "margin": settings.EVAL_GATE_MARGIN,
            "margin_points": round(settings.EVAL_GATE_MARGIN * 100, 2),
            "above_majority": settings.EVAL_GATE_ABOVE_MAJORITY}


def reviewed_suite_size() -> int:
    """Items in the review queue's held-out split (what the reviewed suite would score)."""
    try:
        items, _source = held_out_items()
    except EvalError:
        return 0
    return len(items)


def latest_run(served_model: Any, suite: str) -> EvalRun | None:
    return (EvalRun.objects.filter(served_model=served_model, suite=suite,
                                   status=EvalRun.Status.COMPLETE)
            .order_by("-finished_at", "-id").first())


def _accuracy(run: EvalRun) -> dict[str, Any]:
    return dict((run.metrics.get("headline") or {}).get("accuracy_all") or {})


def _labels(run: EvalRun) -> dict[str, Any] | None:
    return (run.metrics.get("headline") or {}).get("labels")


def no_better_than_majority(run: EvalRun) -> str | None:
    """The sentence refusing a run whose accuracy is not above its majority baseline (answering
    the commonest gold label to every question), else None (also where answers are not
    labels)."""
    labels, accuracy = _labels(run), _accuracy(run)
    if not labels or accuracy.get("value") is None:
        return None
    majority = labels["majority"]
    if accuracy["value"] > majority["value"]:
        return None
    recalls = ", ".join(f"{label} {block['value']:.0%}"
                        for label, block in sorted(labels["recall"].items()))
    top = labels.get("top_prediction")
    said = (f"; it answered \"{top['label']}\" to {top['share']:.0%} of the questions it "
            "answered" if top else "")
    advice = (" It says one label to nearly everything: a label-balanced training set "
              "(train_adapter --balance-labels) removes the prior it learnt."
              if top and top["share"] >= 0.9 else "")
    return (f"{run.suite}: run {run.pk}'s accuracy {accuracy['value']:.1%} is not above the "
            f"{majority['value']:.1%} of answering \"{majority['label']}\" to every question "
            f"(recall per gold label: {recalls}{said}). A model no better than the label "
            f"prior has not learnt the task.{advice}")


def too_few_items(run: EvalRun, minimum: int) -> str | None:
    """The sentence refusing a run scored on fewer than `minimum` questions, else None."""
    scored = int(_accuracy(run).get("n") or 0)
    if scored >= minimum:
        return None
    if run.suite in GROWING_SUITES:
        advice = ("Review more answers: the suite grows with the review queue's held-out "
                  "split.")
    elif run.limit:
        advice = f"Run the suite without --limit (or with --limit {minimum} or more)."
    else:
        advice = f"Run it on a data file with at least {minimum} questions (--data)."
    return (f"The {run.suite} run {run.pk} scored {scored} items; the gate needs at least "
            f"{minimum} per suite. {advice}")


def compare_runs(candidate: EvalRun, serving: EvalRun) -> dict[str, Any]:
    """The gate's comparison of two runs of one suite: comparable? enough questions? is the
    candidate's accuracy within the margin of the serving model's, at 95%?"""
    min_items, margin = settings.EVAL_GATE_MIN_ITEMS, settings.EVAL_GATE_MARGIN
    a, b = _accuracy(candidate), _accuracy(serving)
    comparison: dict[str, Any] = {
        "suite": candidate.suite, "candidate_run": candidate.pk, "serving_run": serving.pk,
        "candidate_accuracy": a.get("value"), "serving_accuracy": b.get("value"),
        "candidate_n": a.get("n") or 0, "serving_n": b.get("n") or 0,
        "min_items": min_items, "margin": margin, "notes": []}
    if candidate.data_sha256 != serving.data_sha256 or candidate.limit != serving.limit:
        comparison.update(verdict="not comparable", reason=(
            f"{candidate.suite}: run {candidate.pk} and run {serving.pk} used different "
            "data (file hash or --limit differ); run both on the same data."))
        return comparison
    if not a.get("n") or not b.get("n"):
        comparison.update(verdict="not comparable",
                          reason=f"{candidate.suite}: a run has no scored questions.")
        return comparison
    small = [sentence for sentence in (too_few_items(candidate, min_items),
                                       too_few_items(serving, min_items)) if sentence]
    if small:
        comparison.update(verdict="too few items", reason=" ".join(small))
        return comparison
    difference, low, high = difference_interval(a["successes"], a["n"], b["successes"],
                                                b["n"])
    comparison.update(difference=difference, ci_low=low, ci_high=high)
    for name in ("index_version", "prompt_version", "embedding_model"):
        if getattr(candidate, name) != getattr(serving, name):
            comparison["notes"].append(f"{name} differs ({getattr(candidate, name) or '-'} vs "
                                       f"{getattr(serving, name) or '-'})")
    figures = (f"{candidate.suite}: accuracy {a['value']:.1%} vs the serving model's "
               f"{b['value']:.1%} ({a['n']} and {b['n']} questions), difference "
               f"{difference:+.1%} (95% CI {low:+.1%} to {high:+.1%})")
    bound = f"the margin of -{margin * 100:.1f} points"
    labels = _labels(candidate)
    if labels:
        comparison.update(candidate_labels=labels, serving_labels=_labels(serving))
    prior = no_better_than_majority(candidate) if settings.EVAL_GATE_ABOVE_MAJORITY else None
    if high < 0:
        comparison.update(verdict="worse", reason=(
            f"{figures}: below zero beyond the confidence interval."))
    elif prior:
        comparison.update(verdict="no better than the majority label",
                          reason=f"{figures}. But {prior}")
    elif low > -margin:
        comparison.update(verdict="non-inferior", reason=(
            f"{figures}: the interval's lower end is above {bound}."))
    else:
        comparison.update(verdict="inconclusive", reason=(
            f"{figures}: the interval reaches below {bound}, so a loss larger than the margin "
            "is not ruled out. More questions narrow the interval."))
    return comparison


def check_gate(candidate: Any) -> GateResult:
    min_items, margin = settings.EVAL_GATE_MIN_ITEMS, settings.EVAL_GATE_MARGIN
    serving = serving_model_for(candidate.capability)
    if serving is not None and serving.pk == candidate.pk:
        return GateResult(False, min_items, margin, [f"{candidate.name} is already serving."],
                          serving=serving)
    result = GateResult(True, min_items, margin, serving=serving)
    checked = 0
    for suite in gate_suites():
        if suite in GROWING_SUITES:
            size = reviewed_suite_size()
            if size < min_items:
                result.reasons.append(
                    f"{suite}: not in the gate yet; its held-out split has {size} items and "
                    f"joins the gate at {min_items}.")
                continue
        mine = latest_run(candidate, suite)
        if mine is None:
            result.passed = False
            result.reasons.append(
                f"{suite}: {candidate.name} has no complete run; run `python manage.py "
                f"evaluate --suite {suite} --model {candidate.name}`.")
            continue
        small = too_few_items(mine, min_items)
        if small:
            result.passed = False
            result.reasons.append(small)
            continue
        checked += 1
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
        if comparison["verdict"] != "non-inferior":
            result.passed = False
    if result.passed and not checked:
        result.passed = False
        result.reasons.append("No gate suite could be checked; set EVAL_GATE_SUITES to at "
                              "least one suite with enough questions.")
    return result


def promote(candidate: Any, *, user: Any, override: bool = False,
            override_reason: str = "") -> PromotionDecision:
    """Move a candidate to serving if the gate passes (or an admin overrides it, with a
    reason); the previous serving model of the capability is retired. Raises
    PromotionRefused (with the stored decision) otherwise."""
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
