"""The clinician's pages: asking, bad input, permissions, history, feedback."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from clinic.models import Consultation, Feedback

pytestmark = pytest.mark.django_db


def _login(client: Client, user: User) -> Client:
    client.force_login(user)
    return client


def _consultation(user: User, question: str = "Does aspirin prevent stroke?",
                  **extra: object) -> Consultation:
    return Consultation.objects.create(user=user, question=question, **extra)  # type: ignore[arg-type]


def test_the_ask_page_shows_the_question_box(client: Client, clinician: User) -> None:
    response = _login(client, clinician).get("/")
    assert response.status_code == 200
    assert b'name="question"' in response.content
    assert "default-src 'self'" in response["Content-Security-Policy"]


def test_asking_stores_the_question_before_showing_the_answer_page(client: Client,
                                                                    clinician: User) -> None:
    response = _login(client, clinician).post(
        "/", {"question": "  Is metformin safe in CKD stage 3?  ", "patient_note": "eGFR 45",
              "quick": "1"})
    consultation = Consultation.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/consultations/{consultation.pk}/"
    assert consultation.question == "Is metformin safe in CKD stage 3?"
    assert consultation.patient_note == "eGFR 45"
    assert consultation.mode == "quick"
    assert consultation.status == "pending"
    assert consultation.user == clinician


@pytest.mark.parametrize(("question", "message"), [
    ("", "The question is empty"),
    ("   \n\t ", "The question is empty"),
    ("x" * 5000, "The question is 5,000 characters long; the limit is 4,000"),
    ("abc\x00\x01\x02def", "binary data"),
])
def test_bad_questions_get_a_clear_message_and_keep_the_text(client: Client, clinician: User,
                                                             question: str, message: str) -> None:
    response = _login(client, clinician).post("/", {"question": question, "quick": "1"})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Consultation.objects.count() == 0
    if question.strip() and "\x00" not in question:
        assert question[:50] in response.content.decode()


def test_a_flood_of_questions_is_rate_limited_with_a_429(client: Client, clinician: User,
                                                         settings: object) -> None:
    settings.RATE_LIMIT_PER_MINUTE = 2  # type: ignore[attr-defined]
    _login(client, clinician)
    for _ in range(2):
        assert client.post("/", {"question": "Is it safe?", "quick": "1"}).status_code == 302
    response = client.post("/", {"question": "Third one?", "quick": "1"})
    assert response.status_code == 429
    assert response["Retry-After"] == "60"
    assert "Wait a minute" in response.content.decode()
    assert "still in the box" in response.content.decode()
    assert "Third one?" in response.content.decode()
    assert Consultation.objects.count() == 2


def test_a_clinician_sees_their_own_consultation(client: Client, clinician: User) -> None:
    consultation = _consultation(clinician, answer_text="An answer [1].", status="complete")
    response = _login(client, clinician).get(f"/consultations/{consultation.pk}/")
    assert response.status_code == 200
    assert b"Does aspirin prevent stroke?" in response.content


@pytest.mark.parametrize("suffix", ["/", "/snapshot", "/events"])
def test_another_clinician_gets_a_404_everywhere(client: Client, clinician: User,
                                                 other_clinician: User, suffix: str) -> None:
    consultation = _consultation(clinician)
    response = _login(client, other_clinician).get(f"/consultations/{consultation.pk}{suffix}")
    assert response.status_code == 404


@pytest.mark.parametrize("action", ["retry", "cancel", "feedback"])
def test_another_clinician_cannot_act_on_it(client: Client, clinician: User,
                                            other_clinician: User, action: str) -> None:
    consultation = _consultation(clinician, status="failed")
    response = _login(client, other_clinician).post(
        f"/consultations/{consultation.pk}/{action}", {"helpful": "no"})
    assert response.status_code == 404
    consultation.refresh_from_db()
    assert consultation.status == "failed"
    assert Feedback.objects.count() == 0


def test_model_output_is_escaped_on_the_page(client: Client, clinician: User) -> None:
    consultation = _consultation(clinician, status="complete",
                                 answer_text="<script>alert('x')</script> [1]")
    response = _login(client, clinician).get(f"/consultations/{consultation.pk}/")
    assert b"<script>alert" not in response.content
    assert b"&lt;script&gt;alert" in response.content


def test_history_is_newest_first_searchable_and_paginated(client: Client,
                                                          clinician: User,
                                                          other_clinician: User) -> None:
    for index in range(25):
        _consultation(clinician, question=f"Question number {index} about statins")
    _consultation(clinician, question="A question about warfarin")
    _consultation(other_clinician, question="Someone else's warfarin question")
    _login(client, clinician)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/history/")
    assert response.status_code == 200
    page = response.context["page"]
    assert page.paginator.count == 26
    assert page.object_list[0].question == "A question about warfarin"
    assert len(page.object_list) == 20
    assert len(queries) <= 8
    search = client.get("/history/?q=warfarin").context["page"]
    assert [c.question for c in search.object_list] == ["A question about warfarin"]


def test_feedback_is_stored_with_its_problems_and_correction(client: Client,
                                                             clinician: User) -> None:
    consultation = _consultation(clinician, status="complete", answer_text="Yes [1].")
    response = _login(client, clinician).post(f"/consultations/{consultation.pk}/feedback", {
        "helpful": "no", "problems": ["wrong_fact", "unsafe"], "comment": "Dose is wrong",
        "correction": "Use 75 mg daily."})
    assert response.status_code == 302
    feedback = Feedback.objects.get()
    assert feedback.consultation == consultation
    assert feedback.user == clinician
    assert feedback.helpful is False
    assert feedback.problems == ["unsafe", "wrong_fact"]
    assert feedback.correction == "Use 75 mg daily."


def test_feedback_without_a_rating_is_refused_and_nothing_stored(client: Client,
                                                                 clinician: User) -> None:
    consultation = _consultation(clinician, status="complete")
    response = _login(client, clinician).post(f"/consultations/{consultation.pk}/feedback",
                                              {"comment": "hmm"}, follow=True)
    assert "Choose helpful or not helpful" in response.content.decode()
    assert Feedback.objects.count() == 0


def test_retry_puts_a_failed_quick_answer_back_to_pending(client: Client, clinician: User) -> None:
    consultation = _consultation(clinician, status="failed",
                                 error_message="The model server is down.")
    response = _login(client, clinician).post(f"/consultations/{consultation.pk}/retry")
    assert response.status_code == 302
    consultation.refresh_from_db()
    assert consultation.status == "pending"
    assert consultation.error_message == ""
    assert consultation.question == "Does aspirin prevent stroke?"


def test_a_deep_consult_with_redis_down_is_kept_with_a_clear_message(
        client: Client, clinician: User, settings: object,
        django_capture_on_commit_callbacks: object) -> None:
    from config.celery import app

    def use_broker(url: str) -> None:
        # The producer pool caches its connection; drop it so the new URL takes effect.
        app.conf.broker_url = url
        app._pool = None
        app.amqp._producer_pool = None

    use_broker("redis://127.0.0.1:1/0")  # nothing listens on port 1: Redis is "down"
    try:
        _login(client, clinician)
        with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
            response = client.post("/", {"question": "Long question?", "deep": "1"})
    finally:
        use_broker(settings.CELERY_BROKER_URL)  # type: ignore[attr-defined]
    consultation = Consultation.objects.get()
    assert response.status_code == 302
    assert consultation.mode == "deep"
    assert consultation.status == "failed"
    assert "job queue (Redis) is not reachable" in consultation.error_message
    page = client.get(f"/consultations/{consultation.pk}/").content.decode()
    assert "job queue (Redis) is not reachable" in page
    assert 'id="retry"' in page


def test_a_quick_answer_offers_the_deep_consult_the_router_suggested(client: Client,
                                                                     clinician: User) -> None:
    consultation = _consultation(clinician, status="complete", suggested_deep=True,
                                 question="Compare apixaban and warfarin in AF with CKD?")
    page = _login(client, clinician).get(f"/consultations/{consultation.pk}/").content.decode()
    assert 'id="suggest-deep"' in page
    assert '"suggested_deep": true' in page
    response = client.post("/", {"question": "Compare apixaban and warfarin in AF with CKD?",
                                 "deep": "1"})
    assert response.status_code == 302
    assert Consultation.objects.latest("id").mode == "deep"
