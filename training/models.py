"""Training sets (with their data cards) and training runs (jobs that make adapters).

A run keeps what decides its adapter (method, base model and its hash, the training set and its
card's hash, hyperparameters, seed) and what came out (the adapter folder, its manifest, the
candidate ServedModel it registered). Lineage reads from these rows: which export and which
synthetic literature set trained a model version.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class TrainingSet(models.Model):
    """A curated set on disk: sft.jsonl and/or dpo.jsonl plus card.json (the data card)."""

    name = models.CharField(max_length=100, unique=True)
    path = models.CharField(max_length=500, help_text="Folder with the JSONL files and card.json.")
    export_dir = models.CharField(max_length=500, blank=True,
                                  help_text="The verified export it was built from, if any.")
    export_sha256 = models.CharField(max_length=64, blank=True,
                                     help_text="SHA-256 of the export's SFT file (its manifest).")
    export_batch = models.ForeignKey("review.ExportBatch", null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="training_sets")
    literature_articles = models.PositiveIntegerField(
        default=0, help_text="Synthetic literature examples (PubMedQA-style) in the set.")
    literature_sha256 = models.CharField(max_length=64, blank=True)
    sft_records = models.PositiveIntegerField(default=0)
    dpo_records = models.PositiveIntegerField(default=0)
    card = models.JSONField(default=dict)
    card_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"training set {self.name} ({self.sft_records} SFT, {self.dpo_records} DPO)"


class TrainingRun(models.Model):
    class Method(models.TextChoices):
        SFT = "sft", "Supervised fine-tuning (SFTTrainer)"
        DPO = "dpo", "Preference pairs from corrections (DPOTrainer)"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for a training worker"
        RUNNING = "running", "Training"
        COMPLETE = "complete", "Complete"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    method = models.CharField(max_length=4, choices=Method.choices, default=Method.SFT)
    capability = models.CharField(max_length=16, default="literature",
                                  help_text="The registry capability the adapter is a candidate "
                                  "for.")
    training_set = models.ForeignKey(TrainingSet, on_delete=models.PROTECT, related_name="runs")
    base_model = models.CharField(max_length=500, help_text="Folder of the base model.")
    base_model_sha256 = models.CharField(max_length=64, blank=True)
    hyperparameters = models.JSONField(default=dict)
    seed = models.PositiveIntegerField(default=0)
    output_dir = models.CharField(max_length=500, blank=True)

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING,
                              db_index=True)
    error_message = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    claimed_by = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    # Progress, written by the trainer's callback (the page polls it).
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    tokens_seen = models.PositiveBigIntegerField(default=0)
    tokens_per_second = models.FloatField(null=True, blank=True)
    eta_seconds = models.FloatField(null=True, blank=True)
    resumed_from_step = models.PositiveIntegerField(null=True, blank=True)
    curve = models.JSONField(default=list, blank=True,
                             help_text="[{step, loss, tokens, seconds}, ...] as logged.")

    adapter_path = models.CharField(max_length=500, blank=True)
    merged_path = models.CharField(max_length=500, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    served_model = models.OneToOneField("modelsvc.ServedModel", null=True, blank=True,
                                        on_delete=models.SET_NULL, related_name="training_run")

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    wall_seconds = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"training run {self.pk} ({self.method}, {self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.COMPLETE, self.Status.FAILED, self.Status.CANCELLED}
