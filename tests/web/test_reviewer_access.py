"""A reviewer opens only consultations in the review queue; an admin opens any; a clinician
only their own. Anything else is a 404 on every page and API route, never a 403."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from rest_framework.authtoken.models import Token

from clinic.models import Consultation
from review.models import ReviewItem
from tests.web.streams import read_stream

pytestmark = pytest.mark.django_db

PAGES = ["/consultations/{id}/", "/consultations/{id}/snapshot",
         "/consultations/{id}/events"]
API = ["/api/v1/consultations/{id}", "/api/v1/consultations/{id}/stream"]


def _answered(user: User, question: str) -> Consultation:
    return Consultation.objects.create(
        user=user, question=question, patient_note="58-year-old, eGFR 41, on warfarin",
        status=Consultation.Status.COMPLETE, answer_text="An answer [1].")


def _token_client(user: User) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")


def _get(client: Client, url: str) -> int:
    response = client.get(url)
    if response.status_code == 200 and response.streaming:
        read_stream(response)
    return response.status_code


@pytest.fixture
def queued(clinician: User) -> Consultation:
    consultation = _answered(clinician, "Is apixaban safer than warfarin in CKD?")
    ReviewItem.objects.create(consultation=consultation, priority=1)
    return consultation


@pytest.fixture
def unqueued(clinician: User) -> Consultation:
    return _answered(clinician, "Should this patient stop warfarin before dental work?")


@pytest.mark.parametrize("url", PAGES)
def test_a_reviewer_gets_a_404_for_a_consultation_not_in_the_queue(
        client: Client, reviewer: User, unqueued: Consultation, queued: Consultation,
        url: str) -> None:
    client.force_login(reviewer)
    assert _get(client, url.format(id=unqueued.pk)) == 404
    assert _get(client, url.format(id=queued.pk)) == 200


def test_the_reviewers_404_page_shows_nothing_of_the_consultation(
        client: Client, reviewer: User, unqueued: Consultation) -> None:
    client.force_login(reviewer)
    page = client.get(f"/consultations/{unqueued.pk}/").content.decode()
    assert "warfarin" not in page and "eGFR" not in page


@pytest.mark.parametrize("url", API)
def test_the_api_gives_a_reviewer_only_queued_consultations(
        reviewer: User, unqueued: Consultation, queued: Consultation, url: str) -> None:
    api = _token_client(reviewer)
    assert _get(api, url.format(id=unqueued.pk)) == 404
    assert _get(api, url.format(id=queued.pk)) == 200


def test_a_reviewed_item_stays_visible_to_reviewers(
        client: Client, reviewer: User, queued: Consultation) -> None:
    ReviewItem.objects.filter(consultation=queued).update(status=ReviewItem.Status.DONE)
    client.force_login(reviewer)
    assert client.get(f"/consultations/{queued.pk}/").status_code == 200


def test_a_reviewer_who_also_asks_sees_their_own_consultations(
        client: Client, reviewer: User) -> None:
    reviewer.groups.add(Group.objects.get_or_create(name="clinician")[0])
    own = _answered(reviewer, "Does my own question stay mine?")
    client.force_login(reviewer)
    assert client.get(f"/consultations/{own.pk}/").status_code == 200
    assert _get(_token_client(reviewer), f"/api/v1/consultations/{own.pk}") == 200


@pytest.mark.parametrize("url", PAGES + API)
def test_an_admin_opens_any_consultation(admin_user: User, unqueued: Consultation,
                                         url: str) -> None:
    client = _token_client(admin_user)
    client.force_login(admin_user)
    assert _get(client, url.format(id=unqueued.pk)) == 200


def test_the_author_still_opens_their_unqueued_consultation(
        client: Client, clinician: User, unqueued: Consultation) -> None:
    client.force_login(clinician)
    assert client.get(f"/consultations/{unqueued.pk}/").status_code == 200
    assert _get(_token_client(clinician), f"/api/v1/consultations/{unqueued.pk}") == 200


def test_another_clinician_sees_neither(client: Client, other_clinician: User,
                                        unqueued: Consultation, queued: Consultation) -> None:
    client.force_login(other_clinician)
    for consultation in (unqueued, queued):
        assert client.get(f"/consultations/{consultation.pk}/").status_code == 404
