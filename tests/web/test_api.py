"""The integrators' API: token auth, same permissions as the pages, an OpenAPI schema."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from clinic.models import Consultation
from tests.web.streams import read_stream

pytestmark = pytest.mark.django_db


def _token_client(user: User) -> Client:
    token = Token.objects.create(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {token.key}")


def test_it_creates_a_consultation_with_a_token(clinician: User) -> None:
    response = _token_client(clinician).post(
        "/api/v1/consultations", {"question": "Does vitamin D prevent fractures?"},
        content_type="application/json")
    assert response.status_code == 201
    body = response.json()
    consultation = Consultation.objects.get(pk=body["id"])
    assert consultation.user == clinician
    assert consultation.question == "Does vitamin D prevent fractures?"
    assert body["status"] == "pending"
    assert body["links"]["stream"].endswith(f"/api/v1/consultations/{consultation.pk}/stream")


def test_it_rejects_an_empty_question_with_a_clear_error(clinician: User) -> None:
    response = _token_client(clinician).post("/api/v1/consultations", {"question": "   "},
                                             content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "The question is empty; type a clinical question."
    assert Consultation.objects.count() == 0


def test_it_rejects_requests_without_a_token(db: None) -> None:
    response = Client().post("/api/v1/consultations", {"question": "x"},
                             content_type="application/json")
    assert response.status_code == 401
    assert Client().get("/api/v1/consultations/1/stream").status_code == 401


def test_it_lists_only_the_callers_consultations(clinician: User, other_clinician: User) -> None:
    Consultation.objects.create(user=clinician, question="mine")
    Consultation.objects.create(user=other_clinician, question="theirs")
    body = _token_client(clinician).get("/api/v1/consultations").json()
    assert [item["question"] for item in body["results"]] == ["mine"]


@pytest.mark.parametrize("suffix", ["", "/stream"])
def test_another_clinicians_consultation_is_a_404(clinician: User, other_clinician: User,
                                                  suffix: str) -> None:
    consultation = Consultation.objects.create(user=clinician, question="mine")
    client = _token_client(other_clinician)
    response = client.get(f"/api/v1/consultations/{consultation.pk}{suffix}")
    assert response.status_code == 404


def test_the_stream_of_a_finished_answer_replays_its_final_state(clinician: User) -> None:
    consultation = Consultation.objects.create(user=clinician, question="q", status="complete",
                                               answer_text="Done [1].")
    response = _token_client(clinician).get(f"/api/v1/consultations/{consultation.pk}/stream")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    body = read_stream(response)
    assert body.startswith("event: snapshot\n")
    assert "event: final\n" in body
    assert "Done [1]." in body


def test_the_openapi_schema_describes_all_three_endpoints(clinician: User) -> None:
    client = Client()
    client.force_login(clinician)
    schema = client.get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert "/api/v1/consultations" in schema["paths"]
    assert "/api/v1/consultations/{consultation_id}" in schema["paths"]
    assert "/api/v1/consultations/{consultation_id}/stream" in schema["paths"]


def test_a_rate_limited_client_is_told_to_resend_not_about_a_form(clinician: User,
                                                                  settings: object) -> None:
    settings.RATE_LIMIT_PER_MINUTE = 1  # type: ignore[attr-defined]
    client = _token_client(clinician)
    assert client.post("/api/v1/consultations", {"question": "First?"},
                       content_type="application/json").status_code == 201
    response = client.post("/api/v1/consultations", {"question": "Second?"},
                           content_type="application/json")
    assert response.status_code == 429 and response["Retry-After"] == "60"
    error = response.json()["error"]
    assert "send it again" in error and "not stored" in error and "box" not in error
    assert Consultation.objects.count() == 1


def _schema_validator(schema: dict[str, Any], path: str, method: str, code: int) -> Any:
    """A JSON-schema validator for one documented response (OpenAPI 3.0 `nullable` mapped)."""

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: convert(value) for key, value in node.items()}
            if node.pop("nullable", False):
                node = {"anyOf": [node, {"type": "null"}]}
            if "$ref" in node:
                node["$ref"] = node["$ref"].replace("#/components/schemas/", "#/$defs/")
            return node
        if isinstance(node, list):
            return [convert(item) for item in node]
        return node

    response = schema["paths"][path][method]["responses"][str(code)]
    body = convert(response["content"]["application/json"]["schema"])
    body["$defs"] = convert(schema.get("components", {}).get("schemas", {}))
    return jsonschema.Draft202012Validator(body)


def test_every_api_response_matches_its_documented_schema(clinician: User) -> None:
    client = _token_client(clinician)
    schema = client.get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    created = client.post("/api/v1/consultations", {"question": "Does zinc shorten colds?"},
                          content_type="application/json")
    cases = [
        ("/api/v1/consultations", "post", created),
        ("/api/v1/consultations", "post", client.post(
            "/api/v1/consultations", {"question": " "}, content_type="application/json")),
        ("/api/v1/consultations", "get", client.get("/api/v1/consultations")),
        ("/api/v1/consultations/{consultation_id}", "get",
         client.get(f"/api/v1/consultations/{created.json()['id']}")),
        ("/api/v1/consultations/{consultation_id}", "get",
         client.get("/api/v1/consultations/999999")),
    ]
    for path, method, response in cases:
        validator = _schema_validator(schema, path, method, response.status_code)
        errors = [error.message for error in validator.iter_errors(response.json())]
        assert not errors, f"{method.upper()} {path} {response.status_code}: {errors[:3]}"
    listing = client.get("/api/v1/consultations").json()
    assert set(listing) >= {"count", "next", "previous", "results"}
