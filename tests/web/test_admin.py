"""The Django admin works for admins and lists every record type read-only where it must."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db

CHANGELISTS = [
    "clinic/consultation", "clinic/feedback", "review/reviewitem", "review/reviewdecision",
    "review/exportbatch", "review/phiclearance", "evaluation/evalrun",
    "modelsvc/servedmodel", "modelsvc/modelcall", "retrieval/ingestrun",
]


@pytest.mark.parametrize("changelist", CHANGELISTS)
def test_an_admin_can_open_every_changelist(client: Client, admin_user: User,
                                            changelist: str) -> None:
    client.force_login(admin_user)
    assert client.get(f"/admin/{changelist}/").status_code == 200


def test_review_decisions_cannot_be_added_in_the_admin(client: Client, admin_user: User) -> None:
    client.force_login(admin_user)
    assert client.get("/admin/review/reviewdecision/add/").status_code == 403


def test_a_clinician_cannot_use_the_admin(client: Client, clinician: User) -> None:
    client.force_login(clinician)
    response = client.get("/admin/clinic/consultation/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
