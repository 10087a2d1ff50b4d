"""Fixtures for the review tests: answered consultations built the way the pipeline stores them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.urls import NoReverseMatch, reverse

from clinic.models import Claim, Consultation, Feedback, RetrievedPassage

PASSAGES = [
    ("90000001", "Low-dose aspirin for secondary prevention of ischemic stroke",
     "Aspirin reduced recurrent ischemic stroke by 22% and increased major bleeding modestly."),
    ("90000002", "Metformin use in chronic kidney disease stage 3",
     "Lactic acidosis was rare and not increased with metformin at reduced doses."),
]


@pytest.fixture(autouse=True)
def review_urls(settings: Any) -> None:
    try:
        reverse("review:queue")
    except NoReverseMatch:
        settings.ROOT_URLCONF = "tests.review.urls"


@pytest.fixture(autouse=True)
def review_settings(settings: Any) -> None:
    settings.REVIEW_SAMPLE_RATE = 0.0
    settings.REVIEW_CONFIDENCE_THRESHOLD = 0.5
    settings.REVIEW_REQUIRED_REVIEWS = 1
    settings.REVIEW_UNSAFE_REQUIRED_REVIEWS = 2
    settings.REVIEW_CLAIM_MINUTES = 30


@pytest.fixture
def second_reviewer(db: None) -> User:
    user = User.objects.create_user(username="rev_erin", password="rev_erin-pass-123")
    user.groups.add(Group.objects.get_or_create(name="reviewer")[0])
    return user


@pytest.fixture
def answered(clinician: User) -> Callable[..., Consultation]:
    """An answered consultation: two passages, claims with the given support flags."""

    def make(question: str = "Does low-dose aspirin prevent a second stroke?", *,
             supported: tuple[bool | None, ...] = (True, True), abstained: bool = False,
             routing_confidence: float | None = 0.9, routing_fallback: bool = False,
             model_name: str = "smollm2-135m", user: User | None = None,
             patient_note: str = "") -> Consultation:
        consultation = Consultation.objects.create(
            user=user or clinician, question=question, patient_note=patient_note,
            status=Consultation.Status.COMPLETE, routed_model_name=model_name,
            routing_confidence=routing_confidence, routing_fallback=routing_fallback,
            abstained=abstained, prompt_version="answer-v1",
            answer_text="Aspirin lowers recurrent stroke [1]. Metformin is safe in CKD 3 [2].")
        for rank, (pmid, title, text) in enumerate(PASSAGES, start=1):
            RetrievedPassage.objects.create(consultation=consultation, rank=rank, pmid=pmid,
                                            title=title, text=text, score=1.0 / rank)
        texts = ["Aspirin lowers recurrent stroke.", "Metformin is safe in CKD 3."]
        for position, flag in enumerate(supported):
            Claim.objects.create(consultation=consultation, position=position,
                                 text=texts[position % 2], citations=[position % 2 + 1],
                                 support_score=0.8 if flag else 0.2, supported=flag)
        return consultation

    return make


@pytest.fixture
def feedback_on(clinician: User) -> Callable[..., Feedback]:
    def make(consultation: Consultation, *, helpful: bool, problems: list[str] | None = None,
             comment: str = "") -> Feedback:
        return Feedback.objects.create(consultation=consultation, user=consultation.user,
                                       helpful=helpful, problems=problems or [],
                                       comment=comment)
    return make
