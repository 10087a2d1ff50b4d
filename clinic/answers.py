"""Turning retrieved evidence and model text into stored passages, claims and support scores.

Shared by the quick answer and the deep consult, so both store the same shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from clinic.models import Claim, Consultation, RetrievedPassage
from clinic.signals import answer_finished

logger = logging.getLogger(__name__)


def store_passages(consultation: Consultation, hits: Sequence[Any], *,
                   sub_question: int | None = None) -> list[RetrievedPassage]:
    """Snapshot the hits as numbered passages after those already stored (ranks continue)."""
    existing = {p.chunk_id for p in consultation.passages.all() if p.chunk_id}
    next_rank = (consultation.passages.order_by("-rank").values_list("rank", flat=True)
                 .first() or 0) + 1
    rows = []
    for hit in hits:
        if hit.chunk_id in existing:
            continue
        existing.add(hit.chunk_id)
        rows.append(RetrievedPassage(
            consultation=consultation, rank=next_rank, chunk_id=hit.chunk_id, pmid=hit.pmid,
            title=hit.title, journal=hit.journal[:400], year=hit.year,
            publication_types=list(hit.publication_types), retracted=hit.retracted,
            section=hit.section[:100], text=hit.text, score=float(hit.score),
            stages=dict(hit.stages), sub_question=sub_question))
        next_rank += 1
    return RetrievedPassage.objects.bulk_create(rows)


def prompt_passages(passages: Sequence[RetrievedPassage]) -> list[Any]:
    from modelsvc.prompts import PromptPassage

    return [PromptPassage(number=p.rank, pmid=p.pmid, title=p.title, text=p.text)
            for p in passages]


def finalize_answer(consultation: Consultation, text: str,
                    passages: Sequence[RetrievedPassage]) -> Consultation:
    """Parse claims, score each against its cited passage, decide abstention, store it all."""
    from modelsvc.citations import parse_answer
    from modelsvc.verification import check_injection, score_claims, should_abstain, support_rate

    by_rank = {p.rank: p.text for p in passages}
    max_rank = max(by_rank) if by_rank else 0
    parsed = parse_answer(text, max_rank)
    # Ranks are dense from 1, but a deep consult may have dropped some; keep only given ones.
    supports = []
    if parsed.claims:
        from retrieval.embedding import embed_texts

        supports = score_claims(parsed.claims, by_rank, embed=embed_texts)
    injected = check_injection(text, [p.text for p in passages])
    abstain = (injected or not text.strip() or should_abstain(
        parsed.claims, supports, require_citations=consultation.use_retrieval))
    with transaction.atomic():
        consultation.claims.all().delete()
        Claim.objects.bulk_create([
            Claim(consultation=consultation, position=index, text=claim.text,
                  citations=list(claim.citations),
                  support_score=(supports[index].score if index < len(supports) else None),
                  supported=(supports[index].supported if index < len(supports) else None))
            for index, claim in enumerate(parsed.claims)
        ])
        consultation.answer_text = text
        consultation.abstained = abstain
        consultation.support_rate = support_rate(supports) if supports else None
        consultation.removed_citations = parsed.removed_citations
        consultation.status = Consultation.Status.COMPLETE
        consultation.completed_at = timezone.now()
        if injected:
            consultation.error_message = ("The answer repeated instructions found inside a "
                                          "retrieved passage, so it was withheld.")
        consultation.save(update_fields=[
            "answer_text", "abstained", "support_rate", "removed_citations", "status",
            "completed_at", "error_message", "updated_at"])
    answer_finished.send(sender=Consultation, consultation_id=consultation.pk)
    return consultation
