from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from training import services
from training.curation import Limits, TrainingDataError
from training.literature import GOLD_PASSAGES, LiteratureOptions
from training.models import TrainingRun, TrainingSet
from training.trainer import Hyperparameters, TrainingError, check_base_model

DEFAULTS = Hyperparameters()


class Command(BaseCommand):
    help = ("Train a LoRA adapter (PEFT + TRL) from a verified export's train split and the "
            "synthetic literature set, write the adapter, merged weights and a manifest, and "
            "register it as a candidate served model.")

    def add_arguments(self, parser: CommandParser) -> None:
        data = parser.add_argument_group("data")
        data.add_argument("--export", type=Path, default=None,
                          help="Export folder (sft and/or dpo files with manifests).")
        data.add_argument("--export-batch", type=int, default=None,
                          help="A finished export batch (review dashboard) instead of --export.")
        data.add_argument("--training-set", default=None,
                          help="Train on an existing training set (by name); no curation.")
        data.add_argument("--literature", choices=["index", "files", "none"], default="index",
                          help="Synthetic literature set from the indexed corpus (default), from "
                          "--literature-file files read in place, or none.")
        data.add_argument("--literature-file", type=Path, action="append", default=[],
                          help="PubMed XML, JSONL or PubMedQA JSON file for --literature files "
                          "(repeatable); a PubMedQA item's QUESTION is its title.")
        data.add_argument("--decontaminate", type=Path, action="append", default=[],
                          metavar="FILE",
                          help="PubMedQA or MIRAGE file whose questions (and PMIDs) are never "
                          "trained on (repeatable); default every evaluation suite's files.")
        data.add_argument("--gold-passage", choices=list(GOLD_PASSAGES), default="context",
                          help="The literature example's own passage: its abstract without the "
                          "conclusion (default; PubMedQA's artificial set) or the whole "
                          "abstract, as the index serves it (every claim of the target is then "
                          "in the passage it cites).")
        data.add_argument("--expert-labels", action="store_true",
                          help="Where a PubMedQA-format --literature-file gives an expert "
                          "final_decision, use it as the label instead of the builder's "
                          "reading of the conclusion.")
        data.add_argument("--balance-labels", action="store_true",
                          help="Cap each yes/no/maybe label of the literature examples at the "
                          "count of the second commonest, so the adapter cannot score by "
                          "saying the commonest label to everything.")
        data.add_argument("--name", default="", help="Name of the new training set.")
        data.add_argument("--max-target-chars", type=int, default=Limits.max_target_chars)
        data.add_argument("--max-prompt-chars", type=int, default=Limits.max_prompt_chars)
        data.add_argument("--set-only", action="store_true",
                          help="Build the training set and its data card; do not train.")
        model = parser.add_argument_group("model")
        model.add_argument("--method", choices=["sft", "dpo"], default="sft")
        model.add_argument("--base-model", type=Path, default=None,
                           help="Base model folder; default MODEL_CACHE_DIR/"
                           f"{services.DEFAULT_BASE_FOLDER}.")
        model.add_argument("--capability", default="literature",
                           choices=["literature", "knowledge", "reasoning"])
        hyper = parser.add_argument_group("hyperparameters")
        hyper.add_argument("--lora-r", type=int, default=DEFAULTS.lora_r)
        hyper.add_argument("--lora-alpha", type=int, default=DEFAULTS.lora_alpha)
        hyper.add_argument("--lora-dropout", type=float, default=DEFAULTS.lora_dropout)
        hyper.add_argument("--target-modules", default=DEFAULTS.target_modules,
                           help="all-linear, or comma-separated module names (q_proj,v_proj).")
        hyper.add_argument("--learning-rate", type=float, default=None,
                           help="Default 2e-4 for SFT, 5e-5 for DPO.")
        hyper.add_argument("--epochs", type=float, default=DEFAULTS.epochs)
        hyper.add_argument("--max-steps", type=int, default=DEFAULTS.max_steps,
                           help="Stop after this many optimizer steps (overrides --epochs).")
        hyper.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
        hyper.add_argument("--gradient-accumulation", type=int,
                           default=DEFAULTS.gradient_accumulation)
        hyper.add_argument("--max-length", type=int, default=DEFAULTS.max_length,
                           help="Longest tokenised example; longer ones are truncated.")
        hyper.add_argument("--save-steps", type=int, default=DEFAULTS.save_steps)
        hyper.add_argument("--logging-steps", type=int, default=DEFAULTS.logging_steps)
        hyper.add_argument("--beta", type=float, default=DEFAULTS.dpo_beta, help="DPO beta.")
        hyper.add_argument("--seed", type=int, default=0)
        job = parser.add_argument_group("job")
        job.add_argument("--celery", action="store_true",
                         help="Queue the run on the `training` queue instead of training here.")
        job.add_argument("--resume", type=int, default=None, metavar="RUN_ID",
                         help="Go on with a stopped run from its latest checkpoint.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            run = self._run(options)
        except (TrainingDataError, TrainingError) as error:
            raise CommandError(error.message) from error
        if run is None:
            return
        if options["celery"] and not run.is_finished:
            self.stdout.write(f"training run {run.pk} queued on the training queue; follow it "
                              f"at /training/runs/{run.pk}/")
            return
        run.refresh_from_db()
        if run.status != TrainingRun.Status.COMPLETE:
            raise CommandError(f"training run {run.pk} is {run.status}: {run.error_message}")
        manifest = run.manifest
        self.stdout.write(json.dumps({
            "run": run.pk, "served_name": manifest["served_name"],
            "adapter": manifest["adapter"]["path"], "merged": manifest["merged"],
            "examples": manifest["examples"], "steps": manifest["steps"],
            "tokens": manifest["tokens"], "seconds": manifest["seconds"],
            "tokens_per_second": manifest["tokens_per_second"],
            "final_loss": manifest["curve"][-1]["loss"] if manifest["curve"] else None,
            "manifest_sha256": run.manifest_sha256}, indent=2))

    def _run(self, options: dict[str, Any]) -> TrainingRun | None:
        if options["resume"] is not None:
            run = TrainingRun.objects.filter(pk=options["resume"]).first()
            if run is None:
                raise CommandError(f"No training run {options['resume']}.")
            if options["celery"]:
                resumed = services.training_run_resume(run_id=run.pk)
                if resumed is None:
                    raise CommandError("Only a failed or cancelled run can be resumed.")
                return resumed
            if run.status in (TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED):
                TrainingRun.objects.filter(pk=run.pk).update(
                    status=TrainingRun.Status.PENDING, cancel_requested=False)
            return self._execute(run.pk)
        if not options["set_only"]:
            # Before curating: a base model that cannot take an adapter fails in a second.
            check_base_model((options["base_model"] or services.default_base_model()).resolve())
        training_set = self._training_set(options)
        self._print_card(training_set)
        if options["set_only"]:
            return None
        hyper = Hyperparameters(
            lora_r=options["lora_r"], lora_alpha=options["lora_alpha"],
            lora_dropout=options["lora_dropout"], target_modules=options["target_modules"],
            learning_rate=options["learning_rate"] or (5e-5 if options["method"] == "dpo"
                                                       else DEFAULTS.learning_rate),
            epochs=options["epochs"], max_steps=options["max_steps"],
            batch_size=options["batch_size"],
            gradient_accumulation=options["gradient_accumulation"],
            max_length=options["max_length"], save_steps=options["save_steps"],
            logging_steps=options["logging_steps"], dpo_beta=options["beta"])
        run = services.training_run_create(
            training_set=training_set, method=options["method"],
            base_model=options["base_model"], capability=options["capability"],
            hyperparameters=hyper, seed=options["seed"])
        if options["celery"]:
            services.training_run_enqueue(run)
            return run
        return self._execute(run.pk)

    def _execute(self, run_id: int) -> TrainingRun | None:
        self.stdout.write(f"training run {run_id}: training in this process (progress on "
                          f"/training/runs/{run_id}/)")
        return services.execute_training_run(run_id, worker="manage.py train_adapter")

    def _training_set(self, options: dict[str, Any]) -> TrainingSet:
        if options["training_set"]:
            training_set = TrainingSet.objects.filter(name=options["training_set"]).first()
            if training_set is None:
                raise CommandError(f"No training set named {options['training_set']}.")
            return training_set
        if options["literature"] == "files" and not options["literature_file"]:
            raise CommandError("--literature files needs at least one --literature-file.")
        return services.training_set_create(
            name=options["name"], export_dir=options["export"],
            export_batch_id=options["export_batch"], literature=options["literature"],
            literature_files=options["literature_file"],
            limits=Limits(max_target_chars=options["max_target_chars"],
                          max_prompt_chars=options["max_prompt_chars"]),
            decontaminate=options["decontaminate"] or None,
            options=LiteratureOptions(gold_passage=options["gold_passage"],
                                      expert_labels=options["expert_labels"],
                                      balance_labels=options["balance_labels"]))

    def _print_card(self, training_set: TrainingSet) -> None:
        card = training_set.card
        self.stdout.write(f"training set {training_set.name}: {training_set.sft_records} SFT, "
                          f"{training_set.dpo_records} DPO examples; card sha256 "
                          f"{training_set.card_sha256}")
        self.stdout.write("  counts: " + json.dumps(card.get("counts", {}), sort_keys=True))
        for reason, count in sorted((card.get("filtered") or {}).items()):
            self.stdout.write(f"  filtered {count}: {reason}")
