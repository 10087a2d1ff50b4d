"""Writes for training: build a training set, create/queue/cancel/resume a run, execute it.

A run executes on the `training` Celery queue (or in-process from `manage.py train_adapter`).
The worker claims the row with a conditional update (a pending run, or a running one whose
progress stopped TRAINING_STALE_SECONDS ago: its worker died), so a redelivered job never
trains twice at once; it goes on from the latest checkpoint. When training ends the adapter is
registered as a candidate ServedModel of the run's capability and linked for the embedded
model server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from jobs.queueing import enqueue_after_commit
from modelsvc.models import ServedModel
from review.models import ExportBatch
from training import tasks
from training.curation import Limits, TrainingDataError, curate
from training.literature import (
    LiteratureOptions,
    LiteratureSource,
    sources_from_files,
    sources_from_index,
)
from training.models import TrainingRun, TrainingSet
from training.serving import link_served_name
from training.trainer import (
    Hyperparameters,
    Progress,
    TrainingError,
    check_base_model,
    model_sha256,
    train,
)

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA = 1
DEFAULT_BASE_FOLDER = "smollm2-135m-instruct"


def default_base_model() -> Path:
    return Path(settings.MODEL_CACHE_DIR) / DEFAULT_BASE_FOLDER


# --- training sets -----------------------------------------------------------------------------

def training_set_create(*, name: str = "", export_dir: Path | None = None,
                        export_batch_id: int | None = None, literature: str = "index",
                        literature_files: list[Path] | None = None,
                        limits: Limits | None = None,
                        decontaminate: list[Path] | None = None,
                        options: LiteratureOptions | None = None) -> TrainingSet:
    """Curate a training set into TRAINING_DIR/sets/<name>. `literature`: "index" (articles of
    the indexed corpus), "files" (literature_files read in place) or "none". `decontaminate`:
    evaluation files never trained on instead of every suite's (see curation.curate).
    `options`: how the literature set is built (training.literature.LiteratureOptions)."""
    batch = None
    if export_batch_id is not None:
        batch = ExportBatch.objects.filter(pk=export_batch_id).first()
        if batch is None or batch.status != ExportBatch.Status.DONE or not batch.out_dir:
            raise TrainingDataError(f"Export batch {export_batch_id} has not finished; wait for "
                                    "it (or retry it) on the review dashboard.")
        export_dir = Path(batch.out_dir)
    if export_dir is None and literature == "none":
        raise TrainingDataError("Nothing to train on: give an export (--export DIR) and/or the "
                                "literature set.")
    sources: Iterable[LiteratureSource] | None = None
    origin = ""
    if literature == "index":
        sources, origin = sources_from_index(), "indexed corpus (retrieval.Article)"
    elif literature == "files":
        files = [Path(p) for p in literature_files or []]
        sources, origin = sources_from_files(files), ", ".join(p.name for p in files)
    name = name or f"set-{timezone.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    if TrainingSet.objects.filter(name=name).exists():
        raise TrainingDataError(f"A training set named {name} exists; pick another --name.")
    curated = curate(out_dir=Path(settings.TRAINING_DIR) / "sets" / name, name=name,
                     export_dir=export_dir, literature=sources, literature_origin=origin,
                     limits=limits, decontaminate=decontaminate, options=options)
    return TrainingSet.objects.create(
        name=name, path=str(curated.path), export_dir=str(export_dir or ""),
        export_sha256=curated.export_sha256, export_batch=batch,
        literature_articles=curated.literature_examples,
        literature_sha256=curated.literature_sha256, sft_records=curated.sft_records,
        dpo_records=curated.dpo_records, card=curated.card, card_sha256=curated.card_sha256)


# --- runs --------------------------------------------------------------------------------------

def training_run_create(*, training_set: TrainingSet, method: str = "sft",
                        base_model: Path | None = None, capability: str = "literature",
                        hyperparameters: Hyperparameters | None = None, seed: int = 0,
                        created_by: Any = None) -> TrainingRun:
    """Check what can be checked without loading a model, and store the run (pending)."""
    if method not in TrainingRun.Method.values:
        raise TrainingError(f"Unknown method {method!r}; use sft or dpo.")
    if capability not in ServedModel.Capability.values or capability == "judge":
        raise TrainingError(f"Unknown capability {capability!r}; use literature, knowledge or "
                            "reasoning.")
    records = training_set.sft_records if method == "sft" else training_set.dpo_records
    if not records:
        raise TrainingError(
            f"Training set {training_set.name} has no {method.upper()} examples"
            + (": DPO pairs come from reviewer corrections." if method == "dpo" else ".")
            + " Build a set from an export with reviewed answers, or with the literature set.")
    base = (base_model or default_base_model()).expanduser().resolve()
    check_base_model(base)
    hyper = hyperparameters or Hyperparameters(
        learning_rate=5e-5 if method == "dpo" else Hyperparameters.learning_rate)
    run = TrainingRun.objects.create(
        training_set=training_set, method=method, base_model=str(base), capability=capability,
        hyperparameters=hyper.as_dict(), seed=seed, created_by=created_by)
    run.output_dir = str(Path(settings.TRAINING_DIR) / "runs" / f"run-{run.pk}")
    run.save(update_fields=["output_dir"])
    return run


def training_run_enqueue(run: TrainingRun) -> None:
    enqueue_after_commit(
        tasks.run_training, run, job=f"training run {run.pk}",
        what_to_do="The run is saved; press Resume when the queue is back (or run "
        f"`python manage.py train_adapter --resume {run.pk}`).")


def training_run_cancel(*, run_id: int) -> TrainingRun | None:
    """A pending run is cancelled at once; a running one stops at its next step, after saving
    a checkpoint."""
    now = timezone.now()
    TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.PENDING).update(
        status=TrainingRun.Status.CANCELLED, cancel_requested=True, finished_at=now,
        error_message="Cancelled before it started.", updated_at=now)
    TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
        cancel_requested=True)
    return TrainingRun.objects.filter(pk=run_id).first()


def training_run_resume(*, run_id: int) -> TrainingRun | None:
    """Queue a failed or cancelled run again; it goes on from its latest checkpoint."""
    with transaction.atomic():
        updated = TrainingRun.objects.filter(
            pk=run_id, status__in=[TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED],
        ).update(status=TrainingRun.Status.PENDING, error_message="", cancel_requested=False,
                 finished_at=None, updated_at=timezone.now())
        run = TrainingRun.objects.filter(pk=run_id).first()
        if not updated or run is None:
            return None
        training_run_enqueue(run)
    return run


def _claim(run_id: int, worker: str) -> bool:
    stale = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_SECONDS)
    claimed = TrainingRun.objects.filter(
        Q(status=TrainingRun.Status.PENDING)
        | Q(status=TrainingRun.Status.RUNNING, updated_at__lt=stale),
        pk=run_id, cancel_requested=False,
    ).update(status=TrainingRun.Status.RUNNING, claimed_by=worker[:200],
             attempts=F("attempts") + 1, started_at=timezone.now(), updated_at=timezone.now(),
             error_message="")
    return claimed == 1


def _record_progress(run_id: int, progress: Progress) -> None:
    changes: dict[str, Any] = {
        "step": progress.step, "total_steps": progress.total_steps,
        "tokens_seen": progress.tokens, "tokens_per_second": progress.tokens_per_second,
        "eta_seconds": progress.eta_seconds, "updated_at": timezone.now()}
    if progress.loss is not None:
        changes["loss"] = progress.loss
    TrainingRun.objects.filter(pk=run_id).update(**changes)


def _fail(run_id: int, message: str) -> None:
    TrainingRun.objects.filter(pk=run_id).update(
        status=TrainingRun.Status.FAILED, error_message=message, finished_at=timezone.now(),
        updated_at=timezone.now())


def served_name_for(run: TrainingRun) -> str:
    return f"{run.capability}-{run.method}-run{run.pk}-{run.training_set.card_sha256[:6]}"


def _write_manifest(run: TrainingRun, outcome: Any, base_sha: str) -> tuple[dict[str, Any], str]:
    training_set = run.training_set
    adapter_files = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                     for path in sorted(Path(outcome.adapter_dir).glob("adapter_*"))}
    manifest = {
        "schema": MANIFEST_SCHEMA, "run": run.pk, "method": run.method,
        "capability": run.capability, "served_name": served_name_for(run),
        "base_model": {"path": run.base_model, "sha256": base_sha},
        "training_set": {"name": training_set.name, "path": training_set.path,
                         "card_sha256": training_set.card_sha256,
                         "export_dir": training_set.export_dir,
                         "export_sha256": training_set.export_sha256,
                         "literature_examples": training_set.literature_articles,
                         "literature_sha256": training_set.literature_sha256},
        "hyperparameters": run.hyperparameters, "seed": run.seed,
        "libraries": outcome.versions, "device": outcome.device,
        "examples": outcome.examples, "steps": outcome.steps, "tokens": outcome.tokens,
        "seconds": round(outcome.seconds, 2),
        "tokens_per_second": round(outcome.tokens / outcome.seconds, 1)
        if outcome.seconds else None,
        "resumed_from_step": outcome.resumed_from_step,
        "curve": outcome.curve,
        "adapter": {"path": str(outcome.adapter_dir), "files": adapter_files},
        "merged": str(outcome.merged_dir) if outcome.merged_dir else "",
    }
    payload = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    (Path(run.output_dir) / "manifest.json").write_bytes(payload)
    return manifest, hashlib.sha256(payload).hexdigest()


def register_candidate(run: TrainingRun) -> ServedModel:
    """The adapter as a candidate of its capability (once: a rerun finds the same row)."""
    name = served_name_for(run)
    served_model, _created = ServedModel.objects.get_or_create(
        name=name, defaults={"served_name": name, "base_model": run.base_model,
                             "adapter_path": run.adapter_path, "capability": run.capability,
                             "status": ServedModel.Status.CANDIDATE})
    if run.merged_path:
        link_served_name(name, Path(run.merged_path))
    return served_model


def execute_training_run(run_id: int, *, worker: str = "in-process") -> TrainingRun | None:
    """Train (or go on training) one run; idempotent, so a redelivered job is harmless."""
    run = TrainingRun.objects.select_related("training_set").filter(pk=run_id).first()
    if run is None:
        logger.warning("training run %s no longer exists; nothing to do", run_id)
        return None
    if run.status == TrainingRun.Status.COMPLETE:
        return run
    if not _claim(run_id, worker):
        logger.info("training run %s is %s elsewhere or cancelled; not claimed", run_id,
                    run.status)
        return run
    base = Path(run.base_model)
    started = time.monotonic()
    last_write = [0.0]

    def on_progress(progress: Progress) -> None:
        _record_progress(run_id, progress)

    def should_stop() -> bool:
        # Doubles as the heartbeat: a live run is never taken over as stale.
        now = time.monotonic()
        if now - last_write[0] > 5:
            last_write[0] = now
            TrainingRun.objects.filter(pk=run_id).update(updated_at=timezone.now())
        return TrainingRun.objects.filter(pk=run_id, cancel_requested=True).exists()

    try:
        base_sha = model_sha256(base) if base.is_dir() else ""
        outcome = train(method=run.method, base_model=base, data_dir=Path(run.training_set.path),
                        output_dir=Path(run.output_dir),
                        hyper=Hyperparameters.from_dict(run.hyperparameters), seed=run.seed,
                        resume=True, on_progress=on_progress, should_stop=should_stop)
    except (TrainingError, TrainingDataError) as error:
        logger.warning("training run %s failed: %s", run_id, error.message)
        _fail(run_id, error.message)
        return TrainingRun.objects.get(pk=run_id)
    except Exception as error:
        logger.exception("training run %s failed", run_id)
        _fail(run_id, f"Training failed ({type(error).__name__}); see the worker log. Resume "
                      "goes on from the latest checkpoint.")
        raise
    now = timezone.now()
    common = {"step": outcome.steps, "total_steps": outcome.total_steps, "curve": outcome.curve,
              "tokens_seen": outcome.tokens, "resumed_from_step": outcome.resumed_from_step,
              "updated_at": now, "wall_seconds": round(time.monotonic() - started, 2)}
    if outcome.stopped:
        TrainingRun.objects.filter(pk=run_id).update(
            status=TrainingRun.Status.CANCELLED, finished_at=now,
            error_message=f"Cancelled at step {outcome.steps}; Resume goes on from the "
            "checkpoint saved then.", **common)
        return TrainingRun.objects.get(pk=run_id)
    TrainingRun.objects.filter(pk=run_id).update(
        adapter_path=str(outcome.adapter_dir),
        merged_path=str(outcome.merged_dir or ""), base_model_sha256=base_sha, **common)
    run.refresh_from_db()
    manifest, manifest_sha = _write_manifest(run, outcome, base_sha)
    with transaction.atomic():
        served_model = register_candidate(run)
        TrainingRun.objects.filter(pk=run_id).update(
            status=TrainingRun.Status.COMPLETE, manifest=manifest, manifest_sha256=manifest_sha,
            served_model=served_model, finished_at=timezone.now(), eta_seconds=0,
            tokens_per_second=manifest["tokens_per_second"], updated_at=timezone.now())
    logger.info("training run %s complete: %s registered as a candidate", run_id,
                served_model.name)
    return TrainingRun.objects.get(pk=run_id)
