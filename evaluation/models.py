"""Staged evaluation: one EvalRun per benchmark run, one EvalResult per question and condition.

A run records everything that decides its figures (model and adapter, index, prompt, code and
data versions), so two runs are either comparable or visibly not. Promotion decisions of the
model registry's gate are kept, overrides included.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class EvalRun(models.Model):
    class Suite(models.TextChoices):
        PUBMEDQA = "pubmedqa", "PubMedQA* (question only, retrieval required)"
        MIRAGE = "mirage", "MIRAGE exam questions, with and without retrieval"
        REVIEWED = "reviewed", "Reviewed answers held out by the export split"
        ROUTER = "router", "Routing accuracy on labelled questions"
        CLAIMS = "claims", "Claim verification verdicts on labelled claim/passage pairs"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to start"
        RUNNING = "running", "Running"
        COMPLETE = "complete", "Complete"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    suite = models.CharField(max_length=16, choices=Suite.choices, db_index=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING,
                              db_index=True)
    error_message = models.TextField(blank=True)

    # What was evaluated: the exact `model` value sent, and the registry row when there is one.
    # PROTECT: a model with runs is part of the record; it stays in the registry for good.
    served_model = models.ForeignKey("modelsvc.ServedModel", null=True, blank=True,
                                     on_delete=models.PROTECT, related_name="eval_runs")
    model_name = models.CharField(max_length=200)
    adapter_path = models.CharField(max_length=400, blank=True)
    base_model = models.CharField(max_length=200, blank=True)
    server_model = models.CharField(max_length=200, blank=True,
                                    help_text="The model name the server reported answering.")

    # What else decides the figures.
    index_version = models.CharField(max_length=64, blank=True)
    embedding_model = models.CharField(max_length=200, blank=True)
    reranker = models.CharField(max_length=200, blank=True)
    prompt_version = models.CharField(max_length=64, blank=True)
    router_version = models.CharField(max_length=64, blank=True)
    git_commit = models.CharField(max_length=64, blank=True)
    data_path = models.TextField(blank=True)
    data_sha256 = models.CharField(max_length=64, blank=True)
    limit = models.PositiveIntegerField(null=True, blank=True)
    options = models.JSONField(default=dict, blank=True)

    total = models.PositiveIntegerField(default=0, help_text="Questions x conditions to answer.")
    done = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="eval_runs")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    wall_seconds = models.FloatField(null=True, blank=True)
    claimed_by = models.CharField(max_length=200, blank=True)
    cancel_requested = models.BooleanField(default=False)

    class Meta:
        db_table = "clinic_evalrun"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["suite", "status", "-created_at"])]

    def __str__(self) -> str:
        return f"Eval run {self.pk}: {self.suite} on {self.model_name} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.COMPLETE, self.Status.FAILED, self.Status.CANCELLED}

    @property
    def model_label(self) -> str:
        return self.served_model.name if self.served_model_id and self.served_model else \
            self.model_name


class EvalResult(models.Model):
    """One question under one condition ("retrieval" or "no_retrieval"), as answered."""

    class Outcome(models.TextChoices):
        CORRECT = "correct", "Correct"
        WRONG = "wrong", "Wrong"
        UNPARSEABLE = "unparseable", "Unparseable answer"
        ERROR = "error", "Model or retrieval error"

    run = models.ForeignKey(EvalRun, on_delete=models.CASCADE, related_name="results")
    item_id = models.CharField(max_length=64)
    condition = models.CharField(max_length=16, default="retrieval")
    subset = models.CharField(max_length=32, blank=True)
    question = models.TextField()
    options = models.JSONField(default=dict, blank=True)
    gold = models.TextField(blank=True)
    predicted = models.TextField(blank=True)
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    score = models.FloatField(null=True, blank=True,
                              help_text="Graded agreement (reviewed suite), 0..1.")

    gold_pmids = models.JSONField(default=list, blank=True)
    retrieved_pmids = models.JSONField(default=list, blank=True)
    gold_rank = models.PositiveSmallIntegerField(null=True, blank=True)
    gold_cited = models.BooleanField(null=True)
    passages = models.JSONField(default=list, blank=True)

    answer_text = models.TextField(blank=True)
    claims = models.JSONField(default=list, blank=True)
    cited_passages = models.PositiveIntegerField(default=0)
    supporting_citations = models.PositiveIntegerField(default=0)
    support_rate = models.FloatField(null=True, blank=True)
    abstained = models.BooleanField(default=False)

    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    extra = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "clinic_evalresult"
        ordering = ["run", "id"]
        constraints = [models.UniqueConstraint(fields=["run", "item_id", "condition"],
                                               name="unique_eval_result")]

    def __str__(self) -> str:
        return f"{self.item_id}/{self.condition} in run {self.run_id}: {self.outcome}"

    @property
    def correct(self) -> bool | None:
        if self.outcome in (self.Outcome.UNPARSEABLE, self.Outcome.ERROR):
            return None
        return self.outcome == self.Outcome.CORRECT


class PromotionDecision(models.Model):
    """The gate's answer when someone tried to promote a model, and whether it was overridden;
    or an admin's rollback of a capability to a version that served it before.

    A rollback is recorded as the decision that made `served_model` (the earlier version) serve
    again in place of `compared_with`, with the admin's reason in `override_reason`; the gate
    is not asked (`gate_passed` is None)."""

    class Kind(models.TextChoices):
        PROMOTION = "promotion", "Promotion through the gate"
        ROLLBACK = "rollback", "Rollback to an earlier version"

    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.PROMOTION,
                            db_index=True)

    # PROTECT: deleting a model must never take its promotion history with it.
    served_model = models.ForeignKey("modelsvc.ServedModel", on_delete=models.PROTECT,
                                     related_name="promotion_decisions")
    compared_with = models.ForeignKey("modelsvc.ServedModel", null=True, blank=True,
                                      on_delete=models.PROTECT, related_name="+")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    gate_passed = models.BooleanField(null=True, help_text="None when the gate was not asked "
                                      "(a rollback).")
    promoted = models.BooleanField()
    overridden = models.BooleanField(default=False)
    override_reason = models.TextField(blank=True, help_text="Why an admin overrode the gate, "
                                       "or rolled back.")
    reasons = models.JSONField(default=list, blank=True)
    comparisons = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "clinic_promotiondecision"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        if self.kind == self.Kind.ROLLBACK:
            return f"Rollback from {self.compared_with_id} to {self.served_model_id}"
        verdict = "overridden" if self.overridden else ("promoted" if self.promoted else "refused")
        return f"Promotion of {self.served_model_id}: {verdict}"
