"""The review pages: who may see them, what they show, and how many queries they cost."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from review.models import ExportBatch, ReviewDecision
from review.services import enqueue_for_review


@pytest.fixture
def item(answered, feedback_on):
    consultation = answered()
    feedback_on(consultation, helpful=False, comment="Missed the bleeding risk.")
    return enqueue_for_review(consultation_id=consultation.pk)


def review_urls(item):
    batch = ExportBatch.objects.create(format="sft", status="done", file_name="sft.jsonl")
    return [("get", reverse("review:queue")), ("post", reverse("review:claim_next")),
            ("get", reverse("review:item", args=[item.pk])),
            ("post", reverse("review:claim", args=[item.pk])),
            ("post", reverse("review:release", args=[item.pk])),
            ("post", reverse("review:decide", args=[item.pk])),
            ("get", reverse("review:dashboard")), ("post", reverse("review:export_create")),
            ("get", reverse("review:export_status", args=[batch.pk])),
            ("get", reverse("review:export_download", args=[batch.pk, "data"])),
            ("get", reverse("review:phi_holds")),
            ("post", reverse("review:phi_clear", args=[item.pk]))]


def test_a_clinician_gets_a_404_on_every_review_url(client, clinician, item):
    client.force_login(clinician)
    for method, url in review_urls(item):
        response = getattr(client, method)(url, {"kind": "approve"})
        assert response.status_code == 404, url
    item.refresh_from_db()
    assert item.claimed_by is None and not ReviewDecision.objects.exists()


def test_a_reviewer_is_refused_the_admin_pages(client, reviewer, item):
    client.force_login(reviewer)
    assert client.get(reverse("review:dashboard")).status_code == 403
    assert client.post(reverse("review:export_create"), {"format": "sft",
                                                         "min_reviews": 1}).status_code == 403
    assert not ExportBatch.objects.exists()


def test_the_queue_page_lists_items_in_a_fixed_number_of_queries(
        client, reviewer, answered, feedback_on):
    client.force_login(reviewer)
    for number in range(3):
        enqueue_for_review(consultation_id=answered(f"Question {number}?",
                                                    supported=(False,)).pk)
    with CaptureQueriesContext(connection) as few:
        assert client.get(reverse("review:queue")).status_code == 200
    for number in range(3, 12):
        enqueue_for_review(consultation_id=answered(f"Question {number}?",
                                                    supported=(False,)).pk)
    with CaptureQueriesContext(connection) as many:
        response = client.get(reverse("review:queue"))
    assert response.content.count(b"Question ") == 12
    assert len(many) == len(few) <= 14


def test_a_reviewer_claims_corrects_and_the_clinician_never_sees_who(
        client, reviewer, clinician, item):
    client.force_login(reviewer)
    client.post(reverse("review:claim", args=[item.pk]))
    page = client.get(reverse("review:item", args=[item.pk]))
    assert b"Missed the bleeding risk." in page.content
    assert b"support 0.80" in page.content
    response = client.post(reverse("review:decide", args=[item.pk]), {
        "kind": "correct", "claim-0-text": "Aspirin lowers recurrent stroke by 22%.",
        "claim-0-citations": "1", "claim-1-text": "", "claim-1-citations": "",
        "specialty": "neurology"})
    assert response.status_code == 302
    item.refresh_from_db()
    assert item.final_answer_text == "Aspirin lowers recurrent stroke by 22% [1]."
    assert item.specialty == "neurology"
    client.force_login(clinician)
    page = client.get(reverse("clinic:consultation", args=[item.consultation_id]))
    assert page.status_code == 200
    assert b"rev_carol" not in page.content


def test_the_admin_dashboard_draws_charts_and_queues_an_export(
        client, admin_user, item, monkeypatch, django_capture_on_commit_callbacks):
    from review import tasks

    sent = []
    monkeypatch.setattr(tasks.run_export_batch, "apply_async",
                        lambda args, retry: sent.append(args))
    client.force_login(admin_user)
    page = client.get(reverse("review:dashboard"))
    assert page.status_code == 200
    assert page.content.count(b"<svg") == 4
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("review:export_create"),
                               {"format": "dpo", "min_reviews": 2})
    assert response.status_code == 302
    batch = ExportBatch.objects.get()
    assert (batch.format, batch.min_reviews, batch.created_by) == ("dpo", 2, admin_user)
    assert sent == [[batch.pk]]
