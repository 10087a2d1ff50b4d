"""Review pages: reviewers and admins only; to anyone else the review area does not exist."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from clinic.roles import is_admin, is_reviewer
from review import charts, selectors, services
from review.exports import scrub_item
from review.forms import DecisionForm, ExportForm, PhiClearanceForm, QueueFilterForm
from review.models import ErrorCategory, ExportBatch, ReviewItem

View = Callable[..., HttpResponseBase]


def reviewer_required(view: View) -> View:
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not is_reviewer(request.user):
            raise Http404("No such page.")
        return view(request, *args, **kwargs)
    return wrapped


def admin_required(view: View) -> View:
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not is_reviewer(request.user):
            raise Http404("No such page.")
        if not is_admin(request.user):
            raise PermissionDenied("Only admins can see this page.")
        return view(request, *args, **kwargs)
    return wrapped


def _filters(request: HttpRequest) -> dict[str, Any]:
    form = QueueFilterForm(request.GET or None)
    if form.is_valid():
        return {key: value for key, value in form.cleaned_data.items() if value}
    return {}


@require_GET
@reviewer_required
def queue(request: HttpRequest) -> HttpResponse:
    filters = _filters(request)
    items = selectors.review_queue(reviewer=request.user, **filters)  # type: ignore[arg-type]
    page = Paginator(items, 25).get_page(request.GET.get("page"))
    throughput = selectors.reviewer_throughput(reviewer=request.user)  # type: ignore[arg-type]
    return render(request, "review/queue.html", {
        "page": page, "filter_form": QueueFilterForm(request.GET or None),
        "choices": selectors.review_filter_choices(), "query": request.GET.urlencode(),
        "throughput": throughput,
        "throughput_chart": charts.bar_chart(throughput["series"].points,
                                             title="Your decisions per day, last 30 days",
                                             label_every=5),
    })


@require_POST
@reviewer_required
def claim_next(request: HttpRequest) -> HttpResponse:
    filters = _filters(request)
    base = selectors.review_queue(reviewer=request.user, **filters)  # type: ignore[arg-type]
    item = services.review_claim_next(reviewer=request.user,  # type: ignore[arg-type]
                                      queryset=base)
    if item is None:
        messages.info(request, "Nothing left to claim with these filters.")
        return redirect("review:queue")
    return redirect("review:item", item_id=item.pk)


@require_GET
@reviewer_required
def item_detail(request: HttpRequest, item_id: int) -> HttpResponse:
    item = selectors.review_item_for_reviewer(item_id=item_id,
                                              reviewer=request.user)  # type: ignore[arg-type]
    consultation = item.consultation
    claims = list(consultation.claims.all())
    holds_claim = services.holds_claim(item, request.user)  # type: ignore[arg-type]
    decisions, round_hidden = selectors.decisions_visible_to(
        item, request.user)  # type: ignore[arg-type]
    return render(request, "review/item.html", {
        "item": item, "consultation": consultation,
        "passages": list(consultation.passages.all()), "claims": claims,
        "feedback": list(consultation.feedback.all()),
        "decisions": decisions, "round_hidden": round_hidden,
        "own_consultation": consultation.user_id == request.user.pk,
        "holds_claim": holds_claim,
        "can_adjudicate": is_admin(request.user),
        "form": DecisionForm(initial={"specialty": item.specialty}),
        "error_categories": ErrorCategory.choices,
        "blank_claim_index": len(claims),
    })


def _back(item_id: int) -> HttpResponse:
    return redirect("review:item", item_id=item_id)


@require_POST
@reviewer_required
def claim(request: HttpRequest, item_id: int) -> HttpResponse:
    try:
        services.review_item_claim(item_id=item_id, reviewer=request.user)  # type: ignore[arg-type]
    except (services.ReviewConflict, services.ReviewRefused) as error:
        messages.error(request, error.message)
        return _back(item_id)
    except services.ReviewError as error:
        raise Http404(error.message) from None
    return _back(item_id)


@require_POST
@reviewer_required
def release(request: HttpRequest, item_id: int) -> HttpResponse:
    services.review_item_release(item_id=item_id, reviewer=request.user)  # type: ignore[arg-type]
    messages.info(request, "Released: the item is back in the queue.")
    return redirect("review:queue")


@require_POST
@reviewer_required
def decide(request: HttpRequest, item_id: int) -> HttpResponse:
    form = DecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a decision (approve, correct, reject or escalate).")
        return _back(item_id)
    try:
        decision = services.review_item_decide(
            item_id=item_id, reviewer=request.user,  # type: ignore[arg-type]
            kind=form.cleaned_data["kind"], claims=form.claim_edits(request.POST),
            error_categories=form.cleaned_data["error_categories"],
            note=form.cleaned_data["note"], specialty=form.cleaned_data["specialty"])
    except services.ReviewError as error:
        messages.error(request, error.message)
        return _back(item_id)
    messages.success(request, f"Saved: {decision.get_kind_display().lower()}.")
    return redirect("review:queue")


@require_GET
@admin_required
def dashboard(request: HttpRequest) -> HttpResponse:
    stats = selectors.queue_dashboard()
    batches = list(ExportBatch.objects.select_related("created_by")[:20])
    return render(request, "review/dashboard.html", {
        "stats": stats,
        "queue_chart": charts.line_chart(stats["queue_size"].points,
                                         title="Open items at the end of each day"),
        "resolved_chart": charts.bar_chart(stats["resolved"].points,
                                           title="Items resolved per day", color="#1e6b35",
                                           label_every=5),
        "entered_chart": charts.bar_chart(stats["entered"].points,
                                          title="Items queued per day", label_every=5),
        "age_chart": charts.bar_chart(stats["age_buckets"], title="Open items by age",
                                      color="#8a5300"),
        "agreement": selectors.reviewer_agreement(),
        "export_form": ExportForm(),
        "batches": batches,
        "held": ReviewItem.objects.filter(phi_status=ReviewItem.PhiStatus.HELD).count(),
    })


@require_POST
@admin_required
def export_create(request: HttpRequest) -> HttpResponse:
    form = ExportForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a format and a minimum number of reviews of at least 1.")
        return redirect("review:dashboard")
    batch = services.export_batch_create(
        fmt=form.cleaned_data["format"], since=form.cleaned_data["since"],
        min_reviews=form.cleaned_data["min_reviews"],
        # request.user is User | AnonymousUser to django-stubs; admin_required means a User.
        created_by=request.user)  # type: ignore[arg-type]
    messages.success(request, f"Export {batch.pk} queued.")
    return redirect("review:dashboard")


@require_POST
@admin_required
def export_retry(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = services.export_batch_retry(batch_id=batch_id)
    if batch is None:
        messages.error(request, "That export has not failed (any more); reload the page.")
    else:
        messages.success(request, f"Export {batch.pk} queued again.")
    return redirect("review:dashboard")


@require_GET
@admin_required
def export_status(request: HttpRequest, batch_id: int) -> JsonResponse:
    batch = ExportBatch.objects.filter(pk=batch_id).first()
    if batch is None:
        raise Http404("No such export.")
    return JsonResponse({"id": batch.pk, "status": batch.status,
                         "status_label": batch.get_status_display(), "progress": batch.progress,
                         "error": batch.error_message, "counts": batch.counts,
                         "done": batch.status == ExportBatch.Status.DONE})


@require_GET
@admin_required
def export_download(request: HttpRequest, batch_id: int, kind: str) -> FileResponse:
    batch = ExportBatch.objects.filter(pk=batch_id, status=ExportBatch.Status.DONE).first()
    if batch is None or kind not in ("data", "manifest"):
        raise Http404("No such export file.")
    name = batch.file_name if kind == "data" else f"{batch.format}.manifest.json"
    path = Path(batch.out_dir) / name
    if not path.is_file():
        raise Http404("The export file is no longer on disk.")
    return FileResponse(path.open("rb"), as_attachment=True,
                        filename=f"export-{batch.pk}-{name}")


@require_GET
@admin_required
def phi_holds(request: HttpRequest) -> HttpResponse:
    """Items the PHI gate held at the last export, with the texts as they would leave."""
    items = list(ReviewItem.objects.filter(phi_status=ReviewItem.PhiStatus.HELD)
                 .select_related("consultation").order_by("resolved_at", "id")[:50])
    held = []
    for item in items:
        scrubbed = scrub_item(item)
        held.append({"item": item, "unsure": scrubbed.unsure,
                     "texts": [(name, label, getattr(scrubbed, name)) for name, label in (
                         ("question", "Question"), ("patient_note", "Patient note"),
                         ("final_answer", "Reviewed answer"),
                         ("model_answer", "Model's original answer"))]})
    return render(request, "review/phi_holds.html", {
        "held": held,
        "total": ReviewItem.objects.filter(phi_status=ReviewItem.PhiStatus.HELD).count()})


@require_POST
@admin_required
def phi_clear(request: HttpRequest, item_id: int) -> HttpResponse:
    form = PhiClearanceForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose release or exclude.")
        return redirect("review:phi_holds")
    data = form.cleaned_data
    try:
        services.phi_clearance_record(
            item_id=item_id, admin=request.user,  # type: ignore[arg-type]
            decision=data["decision"], note=data["note"],
            texts={name: data[name] for name in
                   ("question", "patient_note", "final_answer", "model_answer")})
    except services.ReviewError as error:
        messages.error(request, f"Item {item_id}: {error.message}")
        return redirect("review:phi_holds")
    messages.success(request, f"Item {item_id}: " + (
        "released; the next export includes it." if data["decision"] == "release"
        else "kept out of every export."))
    return redirect("review:phi_holds")
