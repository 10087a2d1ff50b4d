"""The API schema and its docs need a login: a browser is sent to the login page, an API client
without a token gets a 401; a logged-in user or a token gets them."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db

SCHEMA = "/api/v1/schema"
DOCS = ["/api/v1/docs", "/api/v1/redoc"]
OPENAPI_JSON = "application/vnd.oai.openapi+json"


def test_the_schema_is_a_401_without_a_login(client: Client) -> None:
    response = client.get(SCHEMA, HTTP_ACCEPT=OPENAPI_JSON)
    assert response.status_code == 401
    assert "paths" not in response.content.decode()
    assert client.get(SCHEMA).status_code == 401  # YAML too


@pytest.mark.parametrize("url", DOCS)
def test_the_docs_send_a_browser_without_a_login_to_the_login_page(client: Client,
                                                                    url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"
    script = client.get(url, {"script": ""})  # the Swagger UI's own script is behind it too
    assert script.status_code == 302


def test_the_schema_is_served_to_a_token(clinician: User) -> None:
    token = Token.objects.create(user=clinician)
    api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = api.get(SCHEMA, HTTP_ACCEPT=OPENAPI_JSON)
    assert response.status_code == 200
    assert "/api/v1/consultations" in response.json()["paths"]


def test_a_bad_token_gets_a_401(db: None) -> None:
    api = Client(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert api.get(SCHEMA, HTTP_ACCEPT=OPENAPI_JSON).status_code == 401


@pytest.mark.parametrize("url", DOCS)
def test_a_logged_in_user_reads_the_docs_and_the_schema(client: Client, clinician: User,
                                                        url: str) -> None:
    client.force_login(clinician)
    assert client.get(url).status_code == 200
    assert client.get(SCHEMA, HTTP_ACCEPT=OPENAPI_JSON).status_code == 200
