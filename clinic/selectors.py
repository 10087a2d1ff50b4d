"""Reads: what a page or the API shows, fetched without N+1 queries."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet
from django.http import Http404

from clinic.models import Consultation
from clinic.roles import is_reviewer


def consultation_for_user(*, consultation_id: int, user: User) -> Consultation:
    """A clinician sees only their own consultations; anyone else's is a 404, never a 403."""
    queryset = Consultation.objects.all()
    if not is_reviewer(user):
        queryset = queryset.filter(user=user)
    try:
        return queryset.get(pk=consultation_id)
    except Consultation.DoesNotExist:
        raise Http404("No such consultation.") from None


def consultation_history(*, user: User, search: str = "") -> QuerySet[Consultation]:
    queryset = Consultation.objects.filter(user=user).order_by("-created_at", "-id")
    if search:
        queryset = queryset.filter(Q(question__icontains=search)
                                   | Q(answer_text__icontains=search))
    return queryset


def consultation_snapshot(consultation_id: int) -> dict[str, Any]:
    """Everything a page needs to draw a consultation, as JSON-safe data."""
    consultation = Consultation.objects.get(pk=consultation_id)
    passages = list(consultation.passages.all())
    claims = list(consultation.claims.all())
    steps = list(consultation.steps.all())
    return {
        "id": consultation.pk,
        "mode": consultation.mode,
        "status": consultation.status,
        "status_label": consultation.get_status_display(),
        "finished": consultation.is_finished,
        "answer_text": consultation.answer_text,
        "abstained": consultation.abstained,
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
             "section": p.section, "text": p.text, "score": round(p.score, 4),
             "stages": p.stages, "url": p.pubmed_url, "sub_question": p.sub_question}
            for p in passages
        ],
        "claims": [
            {"position": c.position, "text": c.text, "citations": c.citations,
             "support_score": None if c.support_score is None else round(c.support_score, 3),
             "supported": c.supported}
            for c in claims
        ],
        "steps": [
            {"position": s.position, "kind": s.kind, "title": s.title, "status": s.status,
             "output": s.output, "tokens": s.tokens,
             "started_at": s.started_at.isoformat() if s.started_at else None,
             "finished_at": s.finished_at.isoformat() if s.finished_at else None,
             "elapsed_s": round((s.finished_at - s.started_at).total_seconds(), 1)
             if s.started_at and s.finished_at else None}
            for s in steps
        ],
    }
