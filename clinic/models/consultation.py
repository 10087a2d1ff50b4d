"""What clinicians ask and what they were told: every row is stored before success is shown."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from modelsvc.models import ModelCall


class Consultation(models.Model):
    class Mode(models.TextChoices):
        QUICK = "quick", "Quick answer"
        DEEP = "deep", "Deep consult"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to start"
        RUNNING = "running", "Working"
        COMPLETE = "complete", "Answered"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class WithheldReason(models.TextChoices):
        LOW_SUPPORT = "low_support", "Too few statements supported by their citations"
        CONTRADICTED = "contradicted", "A cited passage contradicts a statement"
        INJECTION = "injection", "Repeated instructions found inside a passage"
        EMPTY = "empty", "No answer was generated"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                             related_name="consultations")
    question = models.TextField()
    patient_note = models.TextField(blank=True)
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.QUICK)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING,
                              db_index=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    # Routing: exactly one model per question, with the confidence it was chosen at.
    routed_capability = models.CharField(max_length=32, blank=True)
    routed_model = models.ForeignKey("modelsvc.ServedModel", null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="consultations")
    routed_model_name = models.CharField(max_length=200, blank=True)
    routing_confidence = models.FloatField(null=True, blank=True)
    routing_fallback = models.BooleanField(default=False)
    use_retrieval = models.BooleanField(default=True)
    suggested_deep = models.BooleanField(default=False)
    # Retracted articles are left out of the evidence unless the clinician asks for them; then
    # they are marked retracted in the prompt and never count as support.
    include_retracted = models.BooleanField(default=False)

    # The answer as generated once finished (the draft, also when withheld: reviewers read it).
    # While a quick answer streams it holds only the sentences released to the clinician.
    answer_text = models.TextField(blank=True)
    # Withheld: the draft is never shown to the clinician, only why and what to do.
    abstained = models.BooleanField(default=False)
    withheld_reason = models.CharField(max_length=16, choices=WithheldReason.choices,
                                       blank=True)
    support_rate = models.FloatField(null=True, blank=True)
    removed_citations = models.PositiveIntegerField(default=0)
    prompt_version = models.CharField(max_length=32, blank=True)
    index_version = models.CharField(max_length=64, blank=True)

    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(null=True, blank=True)
    stage_timings = models.JSONField(default=dict, blank=True)

    # Deep consult job bookkeeping (the job takes this row's id, never its text).
    attempts = models.PositiveSmallIntegerField(default=0)
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    token_budget = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"Consultation {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.COMPLETE, self.Status.FAILED, self.Status.CANCELLED}

    @property
    def model_calls(self) -> models.QuerySet[ModelCall]:
        """The model server calls made for this consultation (recorded by modelsvc)."""
        return ModelCall.objects.filter(consultation_id=self.pk)


class RetrievedPassage(models.Model):
    """A passage shown to the model as [rank]; a snapshot, so later re-indexing changes nothing."""

    consultation = models.ForeignKey(Consultation, on_delete=models.CASCADE,
                                     related_name="passages")
    rank = models.PositiveSmallIntegerField()
    chunk = models.ForeignKey("retrieval.Chunk", null=True, blank=True,
                              on_delete=models.SET_NULL, related_name="+")
    pmid = models.CharField(max_length=20)
    title = models.TextField(blank=True)
    journal = models.CharField(max_length=400, blank=True)
    year = models.PositiveSmallIntegerField(null=True, blank=True)
    publication_types = models.JSONField(default=list, blank=True)
    retracted = models.BooleanField(default=False)
    # The PMID of the retraction notice, when PubMed links one.
    retraction_notice_pmid = models.CharField(max_length=20, blank=True)
    section = models.CharField(max_length=100, blank=True)
    text = models.TextField()
    score = models.FloatField()
    stages = models.JSONField(default=dict, blank=True)
    sub_question = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["consultation", "rank"]
        constraints = [models.UniqueConstraint(fields=["consultation", "rank"],
                                               name="unique_passage_rank")]

    def __str__(self) -> str:
        return f"[{self.rank}] PMID {self.pmid}"

    @property
    def pubmed_url(self) -> str:
        return f"https://pubmed.ncbi.nlm.nih.gov/{self.pmid}/"


class Claim(models.Model):
    """One sentence of the answer, with the passages it cites and what they say of it."""

    class Verdict(models.TextChoices):
        SUPPORTED = "supported", "Supported"
        CONTRADICTED = "contradicted", "Contradicted"
        NOT_FOUND = "not_found", "Not found"

    consultation = models.ForeignKey(Consultation, on_delete=models.CASCADE,
                                     related_name="claims")
    position = models.PositiveSmallIntegerField()
    text = models.TextField()
    citations = models.JSONField(default=list, blank=True)
    support_score = models.FloatField(null=True, blank=True)
    supported = models.BooleanField(null=True)
    verdict = models.CharField(max_length=12, choices=Verdict.choices, blank=True)
    # The cited passage that supports or contradicts it (for not found, the closest one).
    passage = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["consultation", "position"]

    def __str__(self) -> str:
        return f"Claim {self.position} of consultation {self.consultation_id}"


class Feedback(models.Model):
    class Problem(models.TextChoices):
        WRONG_FACT = "wrong_fact", "Wrong fact"
        WRONG_CITATION = "wrong_citation", "Wrong or missing citation"
        OUTDATED = "outdated", "Outdated"
        UNSAFE = "unsafe", "Unsafe"
        INCOMPLETE = "incomplete", "Incomplete"
        IRRELEVANT = "irrelevant", "Irrelevant"

    consultation = models.ForeignKey(Consultation, on_delete=models.CASCADE,
                                     related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                             related_name="feedback")
    helpful = models.BooleanField()
    comment = models.TextField(blank=True)
    problems = models.JSONField(default=list, blank=True)
    correction = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{'Helpful' if self.helpful else 'Not helpful'} on {self.consultation_id}"


class DeepConsultStep(models.Model):
    class Kind(models.TextChoices):
        PLAN = "plan", "Plan sub-questions"
        RETRIEVE = "retrieve", "Retrieve evidence"
        DRAFT = "draft", "Draft answer"
        VERIFY = "verify", "Verify claims"
        REVISE = "revise", "Revise or abstain"
        FINAL = "final", "Final answer"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    consultation = models.ForeignKey(Consultation, on_delete=models.CASCADE,
                                     related_name="steps")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=10, choices=Kind.choices)
    title = models.CharField(max_length=300)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    output = models.JSONField(default=dict, blank=True)
    tokens = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["consultation", "position"]
        constraints = [models.UniqueConstraint(fields=["consultation", "position"],
                                               name="unique_step_position")]

    def __str__(self) -> str:
        return f"Step {self.position} ({self.kind}) of consultation {self.consultation_id}"
