"""The reviewed suite: held-out reviewed answers, scored by claim overlap and citations."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from clinic.models import Consultation, RetrievedPassage
from evaluation.reviewed import held_out_items, score_against_reference


def test_approved_items_in_the_eval_split_become_items(clinician: User, settings: Any) -> None:
    from review.models import ReviewItem

    settings.EXPORT_EVAL_PERCENT = 100
    consultation = Consultation.objects.create(user=clinician, question="Does aspirin help?",
                                               status="complete")
    RetrievedPassage.objects.create(consultation=consultation, rank=1, pmid="90000001",
                                    text="Aspirin reduced stroke.", score=1.0)
    ReviewItem.objects.create(
        consultation=consultation, priority=1, status="done", outcome="correct",
        phi_status="clear", final_answer_text="Aspirin reduces recurrent stroke [1].",
        final_claims=[{"position": 0, "text": "Aspirin reduces recurrent stroke.",
                       "citations": [1]}])
    items, source = held_out_items()
    assert [(i.question, i.gold_pmids) for i in items] == [("Does aspirin help?",
                                                            ("90000001",))]
    assert "eval split" in source


def test_scores_claim_overlap_and_citation_agreement() -> None:
    reference = {"answer": "Low-dose aspirin reduces recurrent ischemic stroke [1].",
                 "cited_pmids": ["90000001"]}
    agreeing = score_against_reference(
        answer="", claims=["Low-dose aspirin reduces recurrent ischemic stroke."],
        cited_pmids=["90000001"], reference=reference)
    assert agreeing["score"] == pytest.approx(1.0) and agreeing["agrees"]
    unrelated = score_against_reference(
        answer="", claims=["Vitamin D does not prevent hip fractures."],
        cited_pmids=["90000003"], reference=reference)
    assert unrelated["score"] < 0.2 and not unrelated["agrees"]
    assert unrelated["detail"]["citation_agreement"] == 0.0
