"""The review queue, reviewers' decisions and the training exports made from them.

A decision is a record of what a person did and saw; it is written once and never changed, so
the history of every answer that reaches training data can be audited.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models


class ReviewReason(models.TextChoices):
    UNSAFE = "unsafe", "Flagged unsafe"
    THUMBS_DOWN = "thumbs_down", "Not helpful"
    UNSUPPORTED = "unsupported", "Unsupported claims"
    ABSTAINED = "abstained", "Abstained"
    LOW_CONFIDENCE = "low_confidence", "Low-confidence routing"
    SAMPLE = "sample", "Quality sample"


# Lower is reviewed sooner.
REASON_PRIORITY = {
    ReviewReason.UNSAFE: 0,
    ReviewReason.THUMBS_DOWN: 1,
    ReviewReason.UNSUPPORTED: 2,
    ReviewReason.ABSTAINED: 2,
    ReviewReason.LOW_CONFIDENCE: 2,
    ReviewReason.SAMPLE: 3,
}


class ErrorCategory(models.TextChoices):
    WRONG_FACT = "wrong_fact", "Wrong fact"
    WRONG_CITATION = "wrong_citation", "Wrong citation"
    OUTDATED = "outdated", "Outdated"
    UNSAFE = "unsafe", "Unsafe"
    INCOMPLETE = "incomplete", "Incomplete"
    IRRELEVANT = "irrelevant", "Irrelevant"


class ReviewItem(models.Model):
    """One answered consultation waiting for (or done with) human review."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for a reviewer"
        NEEDS_ADJUDICATION = "adjudication", "Reviewers disagree: waiting for an admin"
        ESCALATED = "escalated", "Escalated to an admin"
        DONE = "done", "Reviewed"

    class Outcome(models.TextChoices):
        APPROVED = "approve", "Approved as is"
        CORRECTED = "correct", "Corrected"
        REJECTED = "reject", "Rejected"

    class PhiStatus(models.TextChoices):
        UNCHECKED = "unchecked", "Not checked"
        CLEAR = "clear", "De-identified"
        HELD = "held", "Held: the PHI gate was unsure"
        RELEASED = "released", "Released by an admin after a PHI check"
        EXCLUDED = "excluded", "Kept out of exports by an admin (PHI)"

    consultation = models.OneToOneField("clinic.Consultation", on_delete=models.PROTECT,
                                        related_name="review_item")
    # "|unsafe|thumbs_down|": filterable with a plain substring match on every database.
    reason_codes = models.CharField(max_length=200, default="|")
    priority = models.PositiveSmallIntegerField(db_index=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING,
                              db_index=True)
    required_reviews = models.PositiveSmallIntegerField(default=1)
    # Bumped when a more urgent reason reopens a reviewed item; decisions belong to a round.
    round = models.PositiveSmallIntegerField(default=1)
    model_name = models.CharField(max_length=200, blank=True, db_index=True)
    # Guessed from the question's keywords when queued; a reviewer may correct it.
    specialty = models.CharField(max_length=40, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    claimed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    claim_expires_at = models.DateTimeField(null=True, blank=True)

    outcome = models.CharField(max_length=8, choices=Outcome.choices, blank=True)
    final_answer_text = models.TextField(blank=True)
    final_claims = models.JSONField(default=list, blank=True)
    error_categories = models.JSONField(default=list, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True, db_index=True)

    phi_status = models.CharField(max_length=10, choices=PhiStatus.choices,
                                  default=PhiStatus.UNCHECKED)
    phi_findings = models.JSONField(default=list, blank=True)

    class Meta:
        db_table = "clinic_reviewitem"
        ordering = ["priority", "created_at", "id"]
        indexes = [models.Index(fields=["status", "priority", "created_at"])]

    def __str__(self) -> str:
        return f"Review item {self.pk} ({self.status})"

    @property
    def reasons(self) -> list[str]:
        return [code for code in self.reason_codes.split("|") if code]

    @property
    def reason_labels(self) -> list[str]:
        return [ReviewReason(code).label for code in self.reasons]


class ImmutableQuerySet(models.QuerySet):
    def update(self, **kwargs: Any) -> int:
        raise TypeError("These records are immutable: record a new one instead.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise TypeError("These records are immutable and are never deleted.")


class WriteOnce(models.Model):
    """A record of what a person decided: created once, never changed or deleted (the database
    refuses too: see clinic migration 0007 and review migration 0003)."""

    objects = ImmutableQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise TypeError(f"{self._meta.verbose_name} records are immutable: "
                            "record a new one instead.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise TypeError(f"{self._meta.verbose_name} records are immutable and never deleted.")


class ReviewDecision(WriteOnce):
    """What one reviewer decided about one item, with the answer before and after. Write-once."""

    class Kind(models.TextChoices):
        APPROVE = "approve", "Approve as is"
        CORRECT = "correct", "Correct"
        REJECT = "reject", "Reject"
        ESCALATE = "escalate", "Escalate to an admin"

    item = models.ForeignKey(ReviewItem, on_delete=models.PROTECT, related_name="decisions")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                 related_name="review_decisions")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    round = models.PositiveSmallIntegerField(default=1)
    is_adjudication = models.BooleanField(default=False)
    # Decided without having seen another decision of the same round; only blind decisions
    # count towards agreement between reviewers. None: recorded before blind review existed.
    blind = models.BooleanField(null=True)
    error_categories = models.JSONField(default=list, blank=True)
    note = models.TextField(blank=True)
    specialty = models.CharField(max_length=40, blank=True)
    # {"answer_text": str, "claims": [{"position", "text", "citations"}]}
    before = models.JSONField(default=dict)
    after = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "clinic_reviewdecision"
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["item", "reviewer", "round"],
                                    condition=models.Q(is_adjudication=False),
                                    name="one_review_per_reviewer_per_item"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on item {self.item_id}"


class PhiClearance(WriteOnce):
    """An admin's decision on an item the PHI gate held: the de-identified texts they approved
    for export, or "keep it out". Write-once; it only applies while the item's source texts are
    the ones the admin saw (source_sha256), so a later correction is checked again."""

    class Decision(models.TextChoices):
        RELEASE = "release", "Release the de-identified text for export"
        EXCLUDE = "exclude", "Keep out of every export"

    item = models.ForeignKey(ReviewItem, on_delete=models.PROTECT, related_name="phi_clearances")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                   related_name="+")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    source_sha256 = models.CharField(max_length=64)
    # What the gate was unsure about when the admin looked.
    unsure = models.JSONField(default=list)
    # {"question", "patient_note", "final_answer", "model_answer"}: approved de-identified texts.
    texts = models.JSONField(default=dict, blank=True)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "clinic_phiclearance"
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"PHI {self.decision} on item {self.item_id}"


class ExportBatch(models.Model):
    """One export to training data: its filters, its file, and its manifest."""

    class Format(models.TextChoices):
        SFT = "sft", "Supervised fine-tuning (chat messages)"
        DPO = "dpo", "Preference pairs (DPO)"
        EVAL = "eval", "Held-back benchmark"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    format = models.CharField(max_length=4, choices=Format.choices)
    since = models.DateField(null=True, blank=True)
    min_reviews = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    out_dir = models.CharField(max_length=500, blank=True)
    file_name = models.CharField(max_length=200, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "clinic_exportbatch"
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "export batches"

    def __str__(self) -> str:
        return f"Export {self.pk} ({self.format}, {self.status})"
