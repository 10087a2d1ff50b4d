"""Logins are throttled (django-axes): repeated failures lock the account out from that address
with a page that says until when and to ask an admin; a successful login clears the count."""

from __future__ import annotations

import re
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

pytestmark = pytest.mark.django_db

PASSWORD = "dr_alice-pass-123"  # the clinician fixture's


@pytest.fixture(autouse=True)
def limits(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3


def _login(client: Client, password: str, username: str = "dr_alice", **extra: Any) -> Any:
    return client.post("/accounts/login/", {"username": username, "password": password},
                       **extra)


def test_repeated_failures_lock_the_account_out_with_a_clear_page(
        client: Client, clinician: User) -> None:
    for _ in range(2):
        response = _login(client, "wrong")
        assert response.status_code == 200
        assert "did not match" in response.content.decode()
    locked = _login(client, "wrong")
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Login locked" in page and "contact an admin" in page
    assert re.search(r"try again at <strong><time datetime=\"[^\"]+\">\d\d:\d\d", page)
    assert 0 < int(locked["Retry-After"]) <= 15 * 60
    # Now even the right password is refused until the lockout ends.
    again = _login(client, PASSWORD)
    assert again.status_code == 429
    assert "_auth_user_id" not in client.session


def test_the_lockout_ends_after_the_cool_off(client: Client, clinician: User,
                                             settings: Any) -> None:
    for _ in range(3):
        _login(client, "wrong")
    assert _login(client, PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME)
    response = _login(client, PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/"


def test_a_successful_login_resets_the_count(client: Client, clinician: User) -> None:
    for _ in range(2):
        _login(client, "wrong")
    assert _login(client, PASSWORD).status_code == 302
    client.logout()
    for _ in range(2):
        assert _login(client, "wrong").status_code == 200  # counting from zero again
    assert _login(client, PASSWORD).status_code == 302


def test_a_lockout_is_per_account_and_address(client: Client, clinician: User,
                                              other_clinician: User) -> None:
    for _ in range(3):
        _login(client, "wrong")
    assert _login(client, "dr_bob-pass-123", username="dr_bob").status_code == 302
    elsewhere = Client(REMOTE_ADDR="10.1.2.3")
    assert _login(elsewhere, PASSWORD).status_code == 302


def test_the_admin_login_is_throttled_too(client: Client, admin_user: User) -> None:
    for _ in range(3):
        client.post("/admin/login/", {"username": "admin_dan", "password": "wrong"})
    response = client.post("/admin/login/", {"username": "admin_dan",
                                             "password": "admin_dan-pass-123"})
    assert response.status_code == 429
    assert "Login locked" in response.content.decode()


def test_a_json_client_gets_a_json_lockout(client: Client, clinician: User) -> None:
    for _ in range(3):
        _login(client, "wrong")
    response = _login(client, "wrong", HTTP_ACCEPT="application/json")
    assert response.status_code == 429
    assert "ask an admin" in response.json()["error"]


def test_the_lockout_page_is_served_under_asgi_too(clinician: User) -> None:
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    client = AsyncClient()
    post = async_to_sync(client.post)
    form = {"username": "dr_alice", "password": "wrong"}
    responses = [post("/accounts/login/", form) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 429, 429]
    assert "contact an admin" in responses[-1].content.decode()
