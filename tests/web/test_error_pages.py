"""Error pages look like the rest of the site, say what to do, and a 403 is not a fault."""

from __future__ import annotations

import logging
import sys

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from config.logfilters import ForbiddenWithoutTraceback

pytestmark = pytest.mark.django_db


def test_a_missing_page_is_styled_with_navigation(client: Client, clinician: User) -> None:
    client.force_login(clinician)
    response = client.get("/consultations/999999/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "Page not found" in page and "css/app.css" in page
    assert 'href="/history/"' in page and "Log out dr_alice" in page


def test_a_forbidden_page_is_styled_and_logged_without_a_traceback(
        client: Client, reviewer: User, caplog: pytest.LogCaptureFixture) -> None:
    client.force_login(reviewer)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.get("/review/dashboard/")
    assert response.status_code == 403
    page = response.content.decode()
    assert "You do not have access to this page" in page and "Only admins can see" in page
    [record] = [r for r in caplog.records if getattr(r, "status_code", None) == 403]
    assert "forbidden_without_traceback" in settings.LOGGING["handlers"]["console"]["filters"]
    assert ForbiddenWithoutTraceback().filter(record) is True
    assert record.exc_info is None and record.exc_text is None
    assert "Forbidden" in record.getMessage()


def test_the_favicon_is_served_to_anyone(client: Client) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")


def test_the_api_docs_load_their_scripts_from_this_site(client: Client, clinician: User) -> None:
    client.force_login(clinician)
    page = client.get("/api/v1/docs").content.decode()
    assert "cdn.jsdelivr" not in page and "unpkg" not in page
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    redoc = client.get("/api/v1/redoc").content.decode()
    assert "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js" in redoc


def test_only_a_403_loses_its_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()
    records = {code: logging.LogRecord("django.request", logging.WARNING, __file__, 1, "x", (),
                                       exc_info) for code in (403, 500)}
    for code, record in records.items():
        record.status_code = code
        ForbiddenWithoutTraceback().filter(record)
    assert records[403].exc_info is None
    assert records[500].exc_info is not None


def test_a_database_outage_is_a_503_that_says_to_send_again(clinician: User) -> None:
    from unittest import mock

    from django.db import OperationalError
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=clinician)
    client = Client(raise_request_exception=False)
    client.force_login(clinician)
    down = OperationalError("connection refused")
    with mock.patch("clinic.api.consultation_history", side_effect=down):
        api = client.get("/api/v1/consultations", HTTP_AUTHORIZATION=f"Token {token.key}")
    with mock.patch("clinic.views.consultation_history", side_effect=down):
        page = client.get("/history/")
    assert api.status_code == 503 and api["Retry-After"] == "5"
    message = api.json()["error"]
    assert "send it again" in message and "connection refused" not in message
    assert page.status_code == 503 and page["Retry-After"] == "5"
    assert "Back in a moment" in page.content.decode() and "css/app.css" in page.content.decode()
    with mock.patch("clinic.api.consultation_history", side_effect=RuntimeError("boom")):
        other = client.get("/api/v1/consultations", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert other.status_code == 500 and "logged" in other.json()["error"]
    assert "Retry-After" not in other
