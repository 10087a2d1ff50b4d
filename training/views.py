"""The training pages, for admins only (everyone else gets a 404): training sets with their data
cards, runs with live progress (steps, loss, tokens/s, ETA), start, cancel and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from evaluation.views import admin_only
from review.models import ExportBatch
from training import services
from training.curation import TrainingDataError
from training.literature import LiteratureOptions
from training.models import TrainingRun, TrainingSet
from training.trainer import Hyperparameters, TrainingError


def _progress(run: TrainingRun) -> dict[str, Any]:
    return {"id": run.pk, "status": run.status, "status_label": run.get_status_display(),
            "step": run.step, "total_steps": run.total_steps, "loss": run.loss,
            "tokens_seen": run.tokens_seen, "tokens_per_second": run.tokens_per_second,
            "eta_seconds": run.eta_seconds, "finished": run.is_finished,
            "error_message": run.error_message}


@require_GET
@admin_only
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "training/index.html", {
        "sets": TrainingSet.objects.select_related("export_batch")[:50],
        "runs": TrainingRun.objects.select_related("training_set", "served_model",
                                                   "created_by")[:50],
        "export_batches": ExportBatch.objects.filter(
            status=ExportBatch.Status.DONE,
            format__in=[ExportBatch.Format.SFT, ExportBatch.Format.DPO]).order_by("-id")[:20],
        "defaults": Hyperparameters(), "default_base": services.default_base_model(),
    })


@require_POST
@admin_only
def set_create(request: HttpRequest) -> HttpResponse:
    batch = request.POST.get("export_batch") or None
    try:
        training_set = services.training_set_create(
            name=request.POST.get("name", "").strip(),
            export_batch_id=int(batch) if batch else None,
            literature="index" if request.POST.get("literature") == "1" else "none",
            options=LiteratureOptions(
                gold_passage=request.POST.get("gold_passage") or "context",
                balance_labels=request.POST.get("balance_labels") == "1"))
    except (TrainingDataError, ValueError) as error:
        messages.error(request, f"The training set could not be built: "
                       f"{getattr(error, 'message', error)}")
    else:
        messages.success(request, f"Training set {training_set.name}: "
                         f"{training_set.sft_records} SFT, {training_set.dpo_records} DPO "
                         "examples.")
    return redirect("training:index")


@require_POST
@admin_only
def run_start(request: HttpRequest) -> HttpResponse:
    training_set = get_object_or_404(TrainingSet, pk=request.POST.get("training_set"))
    try:
        max_steps = int(request.POST.get("max_steps") or -1)
        epochs = float(request.POST.get("epochs") or Hyperparameters.epochs)
        base = request.POST.get("base_model", "").strip()
        run = services.training_run_create(
            training_set=training_set, method=request.POST.get("method", "sft"),
            capability=request.POST.get("capability", "literature"),
            base_model=Path(base) if base else None,
            hyperparameters=Hyperparameters(max_steps=max_steps, epochs=epochs),
            created_by=request.user)
    except (TrainingError, ValueError) as error:
        messages.error(request, f"The run could not start: {getattr(error, 'message', error)}")
        return redirect("training:index")
    services.training_run_enqueue(run)
    messages.success(request, f"Training run {run.pk} is queued on the training queue.")
    return redirect("training:run", run_id=run.pk)


@require_GET
@admin_only
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(TrainingRun.objects.select_related(
        "training_set", "served_model", "created_by"), pk=run_id)
    return render(request, "training/run.html", {"run": run, "progress": _progress(run),
                                                 "card": run.training_set.card})


@require_GET
@admin_only
def run_progress(request: HttpRequest, run_id: int) -> JsonResponse:
    return JsonResponse(_progress(get_object_or_404(TrainingRun, pk=run_id)))


@require_POST
@admin_only
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    services.training_run_cancel(run_id=run_id)
    messages.info(request, "Cancellation requested; the run saves a checkpoint and stops.")
    return redirect("training:run", run_id=run_id)


@require_POST
@admin_only
def run_resume(request: HttpRequest, run_id: int) -> HttpResponse:
    if services.training_run_resume(run_id=run_id) is None:
        messages.error(request, "Only a failed or cancelled run can be resumed; reload the page.")
    else:
        messages.success(request, "Resumed; it goes on from its latest checkpoint.")
    return redirect("training:run", run_id=run_id)
