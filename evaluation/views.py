"""The evaluation dashboard, for admins only (everyone else gets a 404, as if it did not exist).

Runs over time per suite and model, one run's figures and questions, two runs side by side with
the questions that got better or worse, one question's passages and answer, the gate, and
rolling a capability back to an earlier version.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from functools import wraps
from typing import Any, cast

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clinic.roles import is_admin
from evaluation import charts, services
from evaluation.gate import PromotionRefused, check_gate, gate_rules, promote
from evaluation.harness import create_run
from evaluation.models import EvalResult, EvalRun, PromotionDecision
from evaluation.suites import SUITES, EvalError
from modelsvc.models import ServedModel
from modelsvc.router import serving_model_for

RUNS_ON_DASHBOARD = 100
RESULTS_PER_PAGE = 50


def admin_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_admin(request.user):
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapped


def _headline_value(run: EvalRun, key: str = "accuracy") -> float | None:
    block = (run.metrics.get("headline") or {}).get(key) or {}
    return block.get("value")


def _progress(run: EvalRun) -> dict[str, Any]:
    return {"id": run.pk, "status": run.status, "status_label": run.get_status_display(),
            "done": run.done, "total": run.total, "finished": run.is_finished,
            "error_message": run.error_message}


@require_GET
@admin_only
def dashboard(request: HttpRequest) -> HttpResponse:
    runs = list(EvalRun.objects.select_related("served_model")
                .order_by("-created_at", "-id")[:RUNS_ON_DASHBOARD])
    suite_charts = []
    for suite in SUITES:
        by_model: dict[str, charts.Series] = {}
        for run in sorted((r for r in runs if r.suite == suite
                           and r.status == EvalRun.Status.COMPLETE),
                          key=lambda r: (r.finished_at or r.created_at, r.pk)):
            value = _headline_value(run, "accuracy_all")
            if value is None:
                continue
            series = by_model.setdefault(run.model_label, charts.Series(run.model_label))
            series.points.append((f"run {run.pk}", value))
        if by_model:
            suite_charts.append({"suite": suite, "svg": charts.line_chart(
                f"{suite}: accuracy (unparseable counted as wrong) per run",
                list(by_model.values()), charts.REFERENCE_FIGURES.get(suite, []))})
    return render(request, "evaluation/dashboard.html", {
        "runs": runs, "suite_charts": suite_charts, "suites": list(SUITES),
        "served_models": ServedModel.objects.order_by("capability", "name"),
    })


@require_POST
@admin_only
def run_start(request: HttpRequest) -> HttpResponse:
    limit = request.POST.get("limit") or None
    try:
        run = create_run(suite_name=request.POST.get("suite", ""),
                         model=request.POST.get("model") or None,
                         limit=int(limit) if limit else None, created_by=request.user)
    except (EvalError, ValueError) as error:
        messages.error(request, f"The run could not start: {error}")
        return redirect("evaluation:dashboard")
    services.eval_run_enqueue(run)
    messages.success(request, f"Run {run.pk} is queued; this page follows its progress.")
    return redirect("evaluation:run", run_id=run.pk)


@require_POST
@admin_only
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    EvalRun.objects.filter(pk=run_id).update(cancel_requested=True)
    messages.info(request, "Cancellation requested; finished questions are kept.")
    return redirect("evaluation:run", run_id=run_id)


@require_POST
@admin_only
def run_resume(request: HttpRequest, run_id: int) -> HttpResponse:
    if services.eval_run_resume(run_id=run_id) is None:
        messages.error(request, "Only a failed or cancelled run can be resumed; reload the page.")
    else:
        messages.success(request, "Resumed; answers the run already has are kept.")
    return redirect("evaluation:run", run_id=run_id)


@require_GET
@admin_only
def run_progress(request: HttpRequest, run_id: int) -> JsonResponse:
    return JsonResponse(_progress(get_object_or_404(EvalRun, pk=run_id)))


def _subset_bars(run: EvalRun) -> list[dict[str, Any]]:
    rendered = []
    for condition, block in (run.metrics.get("conditions") or {}).items():
        bars = [(name, sub["accuracy_all"]["value"] or 0.0, sub["accuracy_all"]["ci_low"],
                 sub["accuracy_all"]["ci_high"]) for name, sub in block["subsets"].items()]
        if bars:
            references = [(f"{name}: {label}", value) for name, _v, _l, _h in bars
                          for label, value in charts.REFERENCE_FIGURES.get(name, [])[:1]
                          if run.suite == "mirage"]
            label = {"retrieval": "with retrieval",
                     "no_retrieval": "without retrieval"}.get(condition, condition)
            rendered.append({"condition": condition, "label": label, "svg": charts.bar_chart(
                f"{run.suite} ({condition}): accuracy per subset", bars, references)})
    return rendered


@require_GET
@admin_only
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(EvalRun.objects.select_related("served_model", "created_by"),
                            pk=run_id)
    results = run.results.only("id", "item_id", "condition", "subset", "gold", "predicted",
                               "outcome", "gold_rank", "abstained", "latency_ms", "score")
    outcome = request.GET.get("outcome", "")
    if outcome:
        results = results.filter(outcome=outcome)
    page = Paginator(results, RESULTS_PER_PAGE).get_page(request.GET.get("page"))
    others = (EvalRun.objects.filter(suite=run.suite, status=EvalRun.Status.COMPLETE)
              .exclude(pk=run.pk).order_by("-created_at")[:20])
    return render(request, "evaluation/run.html", {
        "run": run, "page": page, "outcome": outcome, "outcomes": EvalResult.Outcome.choices,
        "conditions": run.metrics.get("conditions") or {},
        "gain": run.metrics.get("retrieval_gain"), "bars": _subset_bars(run),
        "others": others, "progress": _progress(run),
    })


@require_GET
@admin_only
def result_detail(request: HttpRequest, result_id: int) -> HttpResponse:
    result = get_object_or_404(EvalResult.objects.select_related("run"), pk=result_id)
    gold = set(result.gold_pmids)
    passages = [{**p, "gold": p.get("pmid") in gold} for p in result.passages]
    return render(request, "evaluation/result.html", {"result": result, "run": result.run,
                                                      "passages": passages})


COMPARABILITY_FIELDS = ("suite", "model_name", "adapter_path", "index_version",
                        "embedding_model", "reranker", "prompt_version", "router_version",
                        "git_commit", "data_sha256", "limit")


def compare_two(run_a: EvalRun, run_b: EvalRun) -> dict[str, Any]:
    """Field differences, and each question's outcome in both runs, grouped."""
    differences = [{"field": name, "a": getattr(run_a, name), "b": getattr(run_b, name),
                    "same": getattr(run_a, name) == getattr(run_b, name)}
                   for name in COMPARABILITY_FIELDS]
    comparable = all(d["same"] for d in differences
                     if d["field"] in ("suite", "data_sha256", "limit"))
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    fields = ("id", "item_id", "condition", "subset", "question", "gold", "predicted",
              "outcome", "score")
    for side, run in (("a", run_a), ("b", run_b)):
        for result in run.results.only(*fields):
            rows[(result.item_id, result.condition)][side] = result
    groups: dict[str, list[dict[str, Any]]] = {"better": [], "worse": [], "changed": [],
                                               "same": [], "only_one": []}
    for (item_id, condition), pair in sorted(rows.items()):
        a, b = pair.get("a"), pair.get("b")
        entry = {"item_id": item_id, "condition": condition, "a": a, "b": b,
                 "question": (a or b).question}  # type: ignore[union-attr]
        if a is None or b is None:
            groups["only_one"].append(entry)
        elif a.outcome != "correct" and b.outcome == "correct":
            groups["better"].append(entry)
        elif a.outcome == "correct" and b.outcome != "correct":
            groups["worse"].append(entry)
        elif a.outcome != b.outcome or a.predicted != b.predicted:
            groups["changed"].append(entry)
        else:
            groups["same"].append(entry)
    return {"differences": differences, "comparable": comparable, "groups": groups}


@require_GET
@admin_only
def compare(request: HttpRequest) -> HttpResponse:
    try:
        run_a = get_object_or_404(EvalRun, pk=int(request.GET.get("a", "")))
        run_b = get_object_or_404(EvalRun, pk=int(request.GET.get("b", "")))
    except ValueError:
        raise Http404("Pick two runs to compare.") from None
    comparison = compare_two(run_a, run_b)
    metric_rows = []
    conditions_a = run_a.metrics.get("conditions") or {}
    conditions_b = run_b.metrics.get("conditions") or {}
    for condition in sorted(set(conditions_a) | set(conditions_b)):
        a, b = conditions_a.get(condition, {}), conditions_b.get(condition, {})
        for key in ("accuracy", "accuracy_all", "abstention_rate", "citation_precision",
                    "claim_support_rate", "gold_cited"):
            if key in a or key in b:
                metric_rows.append({"condition": condition, "metric": key,
                                    "a": a.get(key), "b": b.get(key)})
    return render(request, "evaluation/compare.html", {
        "a": run_a, "b": run_b, "metric_rows": metric_rows, **comparison})


class RollbackForm(forms.Form):
    """One capability's rollback: which earlier version serves again, and why."""

    current = forms.IntegerField(widget=forms.HiddenInput, min_value=0)
    to = forms.ChoiceField(label="Serve again", widget=forms.RadioSelect, error_messages={
        "required": "Pick the earlier version to serve again.",
        "invalid_choice": "%(value)s is not an earlier version of this capability any more "
                          "(someone may have changed it); pick one from the list."})
    reason = forms.CharField(
        label="Reason (recorded)", widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": "Say why you roll back: the reason is recorded with the "
                        "decision. Nothing was changed."})

    def __init__(self, data: Any = None, *, capability: str, targets: list[ServedModel],
                 initial: dict[str, Any] | None = None) -> None:
        super().__init__(data, prefix=capability, initial=initial)
        self.capability = capability
        to = cast(forms.ChoiceField, self.fields["to"])
        to.choices = [(model.name, model.name) for model in targets]


def _rollback_forms(bound: RollbackForm | None = None) -> list[dict[str, Any]]:
    """A rollback form per capability that has a serving or an earlier version."""
    entries = []
    for capability in ServedModel.Capability.values:
        current = serving_model_for(capability)
        targets = services.rollback_targets(capability)
        if current is None and not targets:
            continue
        if bound is not None and bound.capability == capability:
            form = bound
        else:
            previous = services.previous_version(capability, current)
            form = RollbackForm(capability=capability, targets=targets, initial={
                "current": current.pk if current else 0,
                "to": previous.name if previous else None})
        entries.append({"capability": capability, "current": current, "targets": targets,
                        "form": form})
    return entries


def _models_page(request: HttpRequest, *, rollback: RollbackForm | None = None,
                 status: int = 200) -> HttpResponse:
    candidates = [{"model": model, "gate": check_gate(model)} for model in
                  ServedModel.objects.filter(status=ServedModel.Status.CANDIDATE)
                  .order_by("capability", "name")]
    # Lineage: what trained each version (the training app's rows, reached through the
    # registry's reverse relation), which runs evaluated it, who promoted it or rolled back
    # to it, and who rolled back away from it.
    lineage = list(ServedModel.objects.select_related(
        "training_run__training_set__export_batch", "training_run__created_by")
        .prefetch_related(Prefetch("eval_runs", queryset=EvalRun.objects.filter(
            status=EvalRun.Status.COMPLETE).order_by("-finished_at", "-id")),
            Prefetch("promotion_decisions", queryset=PromotionDecision.objects.filter(
                promoted=True).select_related("decided_by", "compared_with")))
        .order_by("capability", "-created_at"))
    rollbacks_away: dict[int, list[PromotionDecision]] = defaultdict(list)
    for decision in PromotionDecision.objects.filter(
            kind=PromotionDecision.Kind.ROLLBACK).select_related("decided_by", "served_model"):
        if decision.compared_with_id is not None:
            rollbacks_away[decision.compared_with_id].append(decision)
    for model in lineage:
        model.rollbacks_away = rollbacks_away.get(model.pk, [])  # type: ignore[attr-defined]
    return render(request, "evaluation/models.html", {
        "candidates": candidates, "gate": gate_rules(), "lineage": lineage,
        "serving": ServedModel.objects.filter(status=ServedModel.Status.SERVING),
        "rollbacks": _rollback_forms(rollback),
        "decisions": PromotionDecision.objects.select_related(
            "served_model", "decided_by", "compared_with")[:30],
    }, status=status)


@require_http_methods(["GET", "POST"])
@admin_only
def models_gate(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        candidate = get_object_or_404(ServedModel, pk=request.POST.get("model"))
        override = request.POST.get("override") == "1"
        reason = request.POST.get("override_reason", "")
        if override and not reason.strip():
            messages.error(request, "An override needs a reason; it is recorded.")
            return redirect("evaluation:models")
        try:
            promote(candidate, user=request.user, override=override, override_reason=reason)
        except PromotionRefused as refused:
            messages.error(request, refused.message)
        else:
            messages.success(request, f"{candidate.name} is now serving"
                             + (" (gate overridden)." if override else "."))
        return redirect("evaluation:models")
    return _models_page(request)


@require_POST
@admin_only
def models_rollback(request: HttpRequest) -> HttpResponse:
    """Roll a capability back; a refusal shows the page again with what was typed kept."""
    capability = request.POST.get("capability", "")
    if capability not in ServedModel.Capability.values:
        messages.error(request, "Pick a capability to roll back from the list below.")
        return redirect("evaluation:models")
    form = RollbackForm(request.POST, capability=capability,
                        targets=services.rollback_targets(capability))
    if not form.is_valid():
        return _models_page(request, rollback=form, status=400)
    try:
        decision = services.capability_rollback(
            capability=capability, to=form.cleaned_data["to"],
            reason=form.cleaned_data["reason"], user=request.user,
            expected_current_id=form.cleaned_data["current"])
    except services.RollbackRefused as refused:
        form.add_error(None, refused.message)
        return _models_page(request, rollback=form, status=409)
    replaced = decision.compared_with.name if decision.compared_with else "no model"
    messages.success(request, f"{capability} rolled back: {decision.served_model.name} serves "
                     f"it again in place of {replaced}. The reason is recorded.")
    return redirect("evaluation:models")
