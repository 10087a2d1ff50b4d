"""A clinician's feedback is read-only in the admin: listed and viewable, never added, edited or
deleted, not even by a superuser."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from clinic.models import Consultation, Feedback

pytestmark = pytest.mark.django_db


@pytest.fixture
def feedback(clinician: User) -> Feedback:
    consultation = Consultation.objects.create(user=clinician, question="Does zinc help colds?",
                                               status=Consultation.Status.COMPLETE)
    return Feedback.objects.create(consultation=consultation, user=clinician, helpful=False,
                                   comment="Cites a retracted trial.")


def test_an_admin_lists_and_views_feedback(client: Client, admin_user: User,
                                           feedback: Feedback) -> None:
    client.force_login(admin_user)
    listing = client.get("/admin/clinic/feedback/")
    assert listing.status_code == 200
    view = client.get(f"/admin/clinic/feedback/{feedback.pk}/change/")
    assert view.status_code == 200 and "Cites a retracted trial." in view.content.decode()
    assert b'name="_save"' not in view.content
    assert b"delete_selected" not in listing.content


def test_nobody_adds_feedback_in_the_admin(client: Client, admin_user: User) -> None:
    client.force_login(admin_user)
    assert client.get("/admin/clinic/feedback/add/").status_code == 403
    assert client.post("/admin/clinic/feedback/add/", {"helpful": "on"}).status_code == 403
    assert Feedback.objects.count() == 0


def test_nobody_edits_feedback_in_the_admin(client: Client, admin_user: User,
                                            feedback: Feedback) -> None:
    client.force_login(admin_user)
    client.post(f"/admin/clinic/feedback/{feedback.pk}/change/", {
        "consultation": feedback.consultation_id, "user": feedback.user_id, "helpful": "on",
        "comment": "edited", "problems": "[]", "correction": ""})
    feedback.refresh_from_db()
    assert feedback.comment == "Cites a retracted trial." and feedback.helpful is False


def test_nobody_deletes_feedback_in_the_admin(client: Client, admin_user: User,
                                              feedback: Feedback) -> None:
    client.force_login(admin_user)
    assert client.get(f"/admin/clinic/feedback/{feedback.pk}/delete/").status_code == 403
    assert client.post(f"/admin/clinic/feedback/{feedback.pk}/delete/",
                       {"post": "yes"}).status_code == 403
    client.post("/admin/clinic/feedback/", {"action": "delete_selected",
                                            "_selected_action": [feedback.pk], "post": "yes"})
    assert Feedback.objects.filter(pk=feedback.pk).exists()
