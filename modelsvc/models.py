"""The model registry and the accounting of every call made to a model."""

from __future__ import annotations

from typing import Any

from django.db import models

# What a promoted model is: runs, promotion decisions and answers refer to these values.
FROZEN_ONCE_PROMOTED = ("served_name", "base_model", "adapter_path", "capability",
                        "cost_per_1k_prompt", "cost_per_1k_completion")


class ServedModelFrozen(Exception):
    """A promoted (serving or retired) model cannot change what it is: register a new one."""

    def __init__(self, name: str, status: str, fields: list[str]) -> None:
        self.message = (
            f"{name} has been promoted ({status}), so its {', '.join(fields)} cannot change: "
            "the evaluation runs and promotion decisions that let it serve refer to it as it "
            "is. Register the change as a new model (a new row) and take it through the gate.")
        super().__init__(self.message)


class ServedModelQuerySet(models.QuerySet["ServedModel"]):
    def update(self, **kwargs: Any) -> int:
        frozen = sorted(set(kwargs) & set(FROZEN_ONCE_PROMOTED))
        if frozen:
            promoted = self.exclude(status=ServedModel.Status.CANDIDATE).first()
            if promoted is not None:
                raise ServedModelFrozen(promoted.name, promoted.status, frozen)
        return super().update(**kwargs)


class ServedModel(models.Model):
    """A served model or LoRA adapter, addressed by the `model` value sent to the server.

    Once promoted it is immutable in what it serves (FROZEN_ONCE_PROMOTED): a change is a new
    version, a new row that goes through the gate. Only its status moves on (to retired)."""

    class Capability(models.TextChoices):
        LITERATURE = "literature", "Literature questions (retrieval)"
        KNOWLEDGE = "knowledge", "Knowledge / exam questions"
        REASONING = "reasoning", "Multi-step reasoning (deep consult)"
        JUDGE = "judge", "Claim-support judge"

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        SERVING = "serving", "Serving"
        RETIRED = "retired", "Retired"

    name = models.CharField(max_length=100, unique=True)
    base_model = models.CharField(max_length=200)
    served_name = models.CharField(max_length=200, help_text="The `model` value sent in requests.")
    adapter_path = models.CharField(max_length=400, blank=True,
                                    help_text="LoRA adapter path (vLLM --lora-modules name=path).")
    capability = models.CharField(max_length=16, choices=Capability.choices)
    cost_per_1k_prompt = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    cost_per_1k_completion = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.CANDIDATE,
                              db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ServedModelQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} ({self.capability}, {self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            self._refuse_frozen_changes(kwargs.get("update_fields"))
        super().save(*args, **kwargs)

    def _refuse_frozen_changes(self, update_fields: Any) -> None:
        names = [name for name in FROZEN_ONCE_PROMOTED
                 if update_fields is None or name in update_fields]
        if not names:
            return
        stored = (type(self).objects.filter(pk=self.pk)
                  .values("name", "status", *names).first())
        if stored is None or stored["status"] == self.Status.CANDIDATE:
            return
        fields = {field.name: field for field in self._meta.concrete_fields}
        changed = [name for name in names
                   if fields[name].to_python(getattr(self, name)) != stored[name]]
        if changed:
            raise ServedModelFrozen(stored["name"], stored["status"], changed)


class ModelCall(models.Model):
    """One request to a model server: who asked, what it cost, how long it took."""

    # PROTECT: a model that was called is part of the accounting; it is never deleted.
    served_model = models.ForeignKey(ServedModel, null=True, blank=True,
                                     on_delete=models.PROTECT, related_name="calls")
    model_name = models.CharField(max_length=200)
    adapter = models.CharField(max_length=200, blank=True)
    purpose = models.CharField(max_length=32, db_index=True)
    # The consultation this call served, by id: the model boundary imports nothing above it,
    # and the cost of a call is kept even when its consultation is deleted.
    consultation_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(default=0)
    succeeded = models.BooleanField(default=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # "length" means the answer was cut at max_tokens: worth watching on a dashboard.
    finish_reason = models.CharField(max_length=32, blank=True)
    error_kind = models.CharField(max_length=64, blank=True,
                                  help_text="The ModelServiceError subclass of a failed call.")

    def __str__(self) -> str:
        return f"{self.purpose} via {self.model_name} ({self.prompt_tokens}+" \
               f"{self.completion_tokens} tokens)"


class RouterVersion(models.Model):
    """A trained question router: its file under VAR_DIR/router and its held-out metrics."""

    version = models.CharField(max_length=64, unique=True)
    path = models.CharField(max_length=500, help_text="joblib file of the trained classifier.")
    embedding_model = models.CharField(max_length=200)
    classes = models.JSONField(default=list)
    confidence_threshold = models.FloatField(
        help_text="Below this probability the router falls back to literature + retrieval.")
    accuracy = models.FloatField()
    metrics = models.JSONField(default=dict)
    train_size = models.PositiveIntegerField()
    test_size = models.PositiveIntegerField()
    # {"seed", "test_fraction", "train": [...], "held_out": [...]}: question fingerprints
    # (router_training.question_fingerprint), so an evaluation can leave out every question
    # the router learnt from. Empty for routers trained before the split was kept.
    training_split = models.JSONField(default=dict, blank=True)
    active = models.BooleanField(default=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["active"], condition=models.Q(active=True),
                                    name="one_active_router"),
        ]

    def __str__(self) -> str:
        state = ", active" if self.active else ""
        return f"router {self.version} (accuracy {self.accuracy:.3f}{state})"
