"""Reads: what a page or the API shows, fetched without N+1 queries."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet
from django.http import Http404

from clinic.models import Claim, Consultation, DeepConsultStep, RetrievedPassage
from clinic.roles import is_admin, is_reviewer
from clinic.status import DisplayStatus, consultation_display_status
from modelsvc.models import ModelCall

Reason = Consultation.WithheldReason
WHAT_TO_DO = ("Rephrase the question (more specific: the population, the intervention, the "
              "outcome), or ask for a deep consult, which searches per sub-question and drops "
              "statements its sources do not support. The passages found are listed under "
              "Evidence.")


def visible_consultations(user: User) -> QuerySet[Consultation]:
    """What one account may open: an admin, every consultation; a reviewer, their own and those
    in the review queue (a ReviewItem exists, whatever its state); anyone else, their own."""
    queryset = Consultation.objects.all()
    if is_admin(user):
        return queryset
    if is_reviewer(user):
        return queryset.filter(Q(user=user) | Q(review_item__isnull=False))
    return queryset.filter(user=user)


def consultation_for_user(*, consultation_id: int, user: User) -> Consultation:
    """A consultation the account may open (visible_consultations); any other is a 404, never a
    403, so its existence is not given away."""
    queryset = visible_consultations(user)
    try:
        return queryset.get(pk=consultation_id)
    except Consultation.DoesNotExist:
        raise Http404("No such consultation.") from None


def consultation_history(*, user: User, search: str = "") -> QuerySet[Consultation]:
    # Steps come along: each row's status shows a deep consult's progress.
    queryset = (Consultation.objects.filter(user=user).order_by("-created_at", "-id")
                .prefetch_related("steps"))
    if search:
        # Only an answer the clinician was shown is searched: a withheld draft, or the draft of
        # an answer still being written, would otherwise show through what a search finds.
        shown = Q(status=Consultation.Status.COMPLETE, abstained=False,
                  answer_text__icontains=search)
        queryset = queryset.filter(Q(question__icontains=search) | shown)
    return queryset


def withheld_message(consultation: Consultation, claims: list[Claim],
                     passages: list[RetrievedPassage]) -> str:
    """Why a withheld answer is not shown and what the clinician can do, never its content."""
    reason = consultation.withheld_reason or Reason.LOW_SUPPORT
    if reason == Reason.EMPTY:
        why = "The model returned no answer."
    elif reason == Reason.INJECTION:
        why = ("The draft answer repeated instructions found inside a retrieved passage, so it "
               "was withheld.")
    elif reason == Reason.CONTRADICTED:
        pmids = {p.rank: p.pmid for p in passages}
        numbers = sorted({c.passage for c in claims
                          if c.verdict == Claim.Verdict.CONTRADICTED and c.passage is not None})
        named = ", ".join(f"[{n}] (PMID {pmids[n]})" if n in pmids else f"[{n}]"
                          for n in numbers) or "a cited passage"
        why = (f"The draft answer was withheld: {named} says the opposite of a statement it "
               "was cited for.")
    else:
        cited = [c for c in claims if c.citations]
        supported = sum(1 for c in claims if c.supported)
        if not claims:
            why = "The draft answer made no statement that could be checked, so it was withheld."
        elif consultation.use_retrieval and not cited:
            why = "The draft answer cited none of the passages, so it was withheld."
        else:
            why = (f"The draft answer was withheld: only {supported} of its {len(claims)} "
                   "statements were supported by the passages they cite.")
    return f"{why} {WHAT_TO_DO}"


def _answer_for_clinician(consultation: Consultation) -> str:
    """A withheld draft never leaves the server for a clinician; nor does a deep consult's draft
    before it is verified. A quick answer being written holds only its released sentences."""
    if consultation.abstained:
        return ""
    if consultation.status == Consultation.Status.COMPLETE:
        return consultation.answer_text
    if consultation.mode == Consultation.Mode.QUICK and \
            consultation.status == Consultation.Status.RUNNING:
        return consultation.answer_text
    return ""


def _step_output(output: dict[str, Any]) -> dict[str, Any]:
    # A deep consult's draft and revision are drafts: the verified answer is the final one.
    return {key: value for key, value in output.items() if key != "text"}


ANSWER_PURPOSES = ("answer", "deep_draft", "deep_revise")


def consultation_status(consultation: Consultation,
                        steps: list[DeepConsultStep] | None = None) -> DisplayStatus:
    """The display status with what only one consultation's page needs: why its answer
    stopped, and for a deep consult not yet started, how many wait before it."""
    stopped_by = ""
    if consultation.status == Consultation.Status.COMPLETE:
        stopped_by = (ModelCall.objects.filter(
            consultation_id=consultation.pk, purpose__in=ANSWER_PURPOSES, succeeded=True)
            .order_by("-id").values_list("finish_reason", flat=True).first()) or ""
    queued_ahead = None
    if consultation.mode == Consultation.Mode.DEEP and consultation.status in (
            Consultation.Status.PENDING, Consultation.Status.RUNNING) and not any(
            step.status == DeepConsultStep.Status.RUNNING for step in steps or []):
        queued_ahead = Consultation.objects.filter(
            mode=Consultation.Mode.DEEP, created_at__lt=consultation.created_at,
            status__in=[Consultation.Status.PENDING, Consultation.Status.RUNNING]).count()
    return consultation_display_status(consultation, steps, stopped_by=stopped_by,
                                       queued_ahead=queued_ahead)


def consultation_snapshot(consultation_id: int) -> dict[str, Any]:
    """Everything a page needs to draw a consultation, as JSON-safe data."""
    consultation = Consultation.objects.get(pk=consultation_id)
    passages = list(consultation.passages.all())
    claims = list(consultation.claims.all())
    steps = list(consultation.steps.all())
    display = consultation_status(consultation, steps)
    withheld = consultation.abstained and consultation.is_finished
    retracted = {p.rank for p in passages if p.retracted}
    return {
        "id": consultation.pk,
        "mode": consultation.mode,
        "status": consultation.status,
        "status_label": display.label,
        "display": display.as_dict(),
        "finished": consultation.is_finished,
        "answer_text": _answer_for_clinician(consultation),
        "abstained": consultation.abstained,
        "withheld": {
            "reason": consultation.withheld_reason or Reason.LOW_SUPPORT,
            "label": Reason(consultation.withheld_reason or Reason.LOW_SUPPORT).label,
            "message": withheld_message(consultation, claims, passages),
            "contradicting_passages": sorted({
                c.passage for c in claims
                if c.verdict == Claim.Verdict.CONTRADICTED and c.passage is not None}),
        } if withheld else None,
        "include_retracted": consultation.include_retracted,
        "error_message": consultation.error_message,
        "support_rate": consultation.support_rate,
        "removed_citations": consultation.removed_citations,
        "routing": {
            "capability": consultation.routed_capability,
            "model": consultation.routed_model.name if consultation.routed_model_id
            and consultation.routed_model else consultation.routed_model_name,
            "confidence": consultation.routing_confidence,
            "fallback": consultation.routing_fallback,
            "use_retrieval": consultation.use_retrieval,
            "suggested_deep": consultation.suggested_deep,
        },
        "time_to_first_token_ms": consultation.time_to_first_token_ms,
        "total_ms": consultation.total_ms,
        "prompt_tokens": consultation.prompt_tokens,
        "completion_tokens": consultation.completion_tokens,
        "cost": float(consultation.cost),
        "passages": [
            {"number": p.rank, "pmid": p.pmid, "title": p.title, "journal": p.journal,
             "year": p.year, "publication_types": p.publication_types, "retracted": p.retracted,
             "retraction_notice_pmid": p.retraction_notice_pmid,
             "retraction_notice_url": (f"https://pubmed.ncbi.nlm.nih.gov/"
                                       f"{p.retraction_notice_pmid}/"
                                       if p.retraction_notice_pmid else None),
             "section": p.section, "text": p.text, "score": round(p.score, 4),
             "stages": p.stages, "url": p.pubmed_url, "sub_question": p.sub_question}
            for p in passages
        ],
        # A withheld answer's claims are its draft, sentence by sentence: none is sent.
        "claims": [] if consultation.abstained else [
            {"position": c.position, "text": c.text, "citations": c.citations,
             "support_score": None if c.support_score is None else round(c.support_score, 3),
             "supported": c.supported,
             "verdict": c.verdict or (Claim.Verdict.SUPPORTED if c.supported
                                      else Claim.Verdict.NOT_FOUND),
             "passage": c.passage,
             "retracted_citations": [n for n in c.citations if n in retracted]}
            for c in claims
        ],
        "steps": [
            {"position": s.position, "kind": s.kind, "title": s.title, "status": s.status,
             "output": _step_output(s.output), "tokens": s.tokens,
             "started_at": s.started_at.isoformat() if s.started_at else None,
             "finished_at": s.finished_at.isoformat() if s.finished_at else None,
             "elapsed_s": round((s.finished_at - s.started_at).total_seconds(), 1)
             if s.started_at and s.finished_at else None}
            for s in steps
        ],
    }
