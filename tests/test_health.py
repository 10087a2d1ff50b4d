"""/healthz is public and touches nothing; /readyz is cheap, cached, and never leaks a URL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from clinic import health
from launcher.processes import free_port


@pytest.fixture(autouse=True)
def fresh_readiness() -> Iterator[None]:
    health.forget_readiness()
    yield
    health.forget_readiness()


def _all_ready(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in health.CHECKS:
        def check(name: str = name) -> dict[str, Any]:
            calls.append(name)
            return {"detail": name}
        monkeypatch.setitem(health.CHECKS, name, check)
    return calls


class _ModelsServer:
    """A stand-in model server that records every request and lists one model."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self) -> None:
                recorder.requests.append((self.command, self.path,
                                          self.headers.get("Authorization")))
                body = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _reply

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.django_db
def test_healthz_answers_without_login_and_touches_nothing(
        client: Client, monkeypatch: pytest.MonkeyPatch,
        django_assert_num_queries: Any) -> None:
    for name in health.CHECKS:
        monkeypatch.setitem(health.CHECKS, name, lambda: pytest.fail("healthz ran a check"))
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_pages_need_a_login(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_readyz_tells_anonymous_callers_only_booleans(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    _all_ready(monkeypatch)
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready", "ready": True,
        "checks": {name: {"ready": True} for name in health.CHECKS}}


@pytest.mark.django_db
def test_readyz_gives_staff_the_details(client: Client, admin_user: User,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _all_ready(monkeypatch)
    client.force_login(admin_user)
    body = client.get("/readyz").json()
    assert body["ready"] is True
    assert body["checks"]["index"]["detail"] == "index"
    assert isinstance(body["checks"]["database"]["ms"], int)


@pytest.mark.django_db
def test_a_clinician_gets_no_more_than_an_anonymous_caller(
        client: Client, clinician: User, monkeypatch: pytest.MonkeyPatch) -> None:
    _all_ready(monkeypatch)
    client.force_login(clinician)
    assert client.get("/readyz").json()["checks"]["index"] == {"ready": True}


@pytest.mark.django_db
def test_readyz_runs_its_checks_once_for_a_burst_of_probes(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _all_ready(monkeypatch)
    for _ in range(20):
        assert client.get("/readyz").status_code == 200
    assert calls == list(health.CHECKS)  # each check once
    clock = health.time.monotonic() + health.CACHE_SECONDS + 1
    monkeypatch.setattr(health.time, "monotonic", lambda: clock)
    client.get("/readyz")
    assert calls == list(health.CHECKS) * 2  # and again once the cached result is stale


@pytest.mark.django_db
def test_a_failing_redis_is_reported_without_its_url_or_password(
        client: Client, admin_user: User, settings: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings.REDIS_URL = f"redis://clinic:hunter2-secret@127.0.0.1:{free_port()}/0"
    settings.REDIS_IS_EMBEDDED = False
    for name in ("model_server", "index"):
        monkeypatch.setitem(health.CHECKS, name, lambda: {})
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 503
    assert anonymous.json()["ready"] is False
    assert anonymous.json()["checks"]["redis"] == {"ready": False}
    client.force_login(admin_user)
    detailed = client.get("/readyz")
    for response in (anonymous, detailed):
        text = response.content.decode()
        assert "hunter2" not in text and "redis://" not in text and "127.0.0.1" not in text
        assert "http://" not in text and "clinic:" not in text
    error = detailed.json()["checks"]["redis"]["error"]
    assert "REDIS_URL does not answer" in error


@pytest.mark.django_db
def test_the_model_server_check_lists_models_and_never_asks_for_a_completion(
        client: Client, admin_user: User, settings: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = _ModelsServer()
    try:
        settings.MODEL_BASE_URL = server.base_url
        settings.MODEL_API_KEY = "sk-very-secret"
        settings.MODEL_SERVER_IS_EMBEDDED = False
        for name in ("database", "redis", "index"):
            monkeypatch.setitem(health.CHECKS, name, lambda: {})
        client.force_login(admin_user)
        response = client.get("/readyz")
    finally:
        server.close()
    assert response.status_code == 200, response.content
    assert server.requests == [("GET", "/v1/models", "Bearer sk-very-secret")]
    text = response.content.decode()
    assert "sk-very-secret" not in text and server.base_url not in text
    assert response.json()["checks"]["model_server"]["models_listed"] == 1


@pytest.mark.django_db
def test_a_model_server_that_is_down_is_named_by_its_setting_not_its_address(
        client: Client, admin_user: User, settings: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings.MODEL_BASE_URL = f"http://user:pw@127.0.0.1:{free_port()}/v1"
    settings.MODEL_SERVER_IS_EMBEDDED = False
    for name in ("database", "redis", "index"):
        monkeypatch.setitem(health.CHECKS, name, lambda: {})
    client.force_login(admin_user)
    response = client.get("/readyz")
    assert response.status_code == 503
    error = response.json()["checks"]["model_server"]["error"]
    assert "MODEL_BASE_URL" in error
    assert "127.0.0.1" not in response.content.decode() and "pw" not in error


@pytest.mark.django_db
def test_an_unexpected_error_becomes_a_sentence_without_its_text(
        client: Client, admin_user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    _all_ready(monkeypatch)

    def broken() -> dict[str, Any]:
        raise RuntimeError("cannot reach postgres://admin:pw@db.internal:5432/clinic")

    monkeypatch.setitem(health.CHECKS, "database", broken)
    client.force_login(admin_user)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "db.internal" not in response.content.decode()
    assert "RuntimeError" in response.json()["checks"]["database"]["error"]


def test_urls_are_cut_from_any_sentence() -> None:
    assert health._safe("see rediss://u:p@host:6380/0 now") == "see <url> now"

