"""`manage.py check --deploy` is clean with production settings, and the embedded set-up on
http://127.0.0.1 keeps working over plain http (no HTTPS redirect, no secure-only cookies)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from config.env import READ_FROM_ENV

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DJANGO_ALLOWED_HOSTS": "clinic.example.org",
    "DJANGO_SECRET_KEY": "k7-9Qz2vX1pLr8sT4wYb6nM3cJ5hF0dGaUeZiOoKqWxVyRtSsPlNmBvCxZ7a8",
    "DATABASE_URL": "postgres://clinic:pw@db.internal:5432/clinic",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "MODEL_BASE_URL": "http://gpu.internal:8000/v1",
    "MODEL_NAME": "qwen2.5-7b-instruct",
}


def _run(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in READ_FROM_ENV}
    clean.update(env, VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=180)


def _security_settings(tmp_path: Path, **env: str) -> dict[str, object]:
    code = ("import json, django; django.setup(); from django.conf import settings as s; "
            "print(json.dumps({n: getattr(s, n) for n in ('BEHIND_TLS', 'SECURE_SSL_REDIRECT', "
            "'SECURE_HSTS_SECONDS', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', "
            "'SECURE_PROXY_SSL_HEADER')}))")
    result = _run(tmp_path, ["-c", code], **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env", [
    pytest.param(PRODUCTION, id="postgres-redis-vllm"),
    pytest.param({"DJANGO_ALLOWED_HOSTS": "clinic.example.org"}, id="embedded-services"),
])
def test_check_deploy_is_clean_with_production_settings(tmp_path: Path,
                                                        env: dict[str, str]) -> None:
    result = _run(tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output


def test_production_settings_turn_on_https_everything(tmp_path: Path) -> None:
    assert _security_settings(tmp_path, **PRODUCTION) == {
        "BEHIND_TLS": True, "SECURE_SSL_REDIRECT": True, "SECURE_HSTS_SECONDS": 31536000,
        "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": None}


def test_the_embedded_demo_stays_on_plain_http(tmp_path: Path) -> None:
    assert _security_settings(tmp_path) == {
        "BEHIND_TLS": False, "SECURE_SSL_REDIRECT": False, "SECURE_HSTS_SECONDS": 0,
        "SESSION_COOKIE_SECURE": False, "CSRF_COOKIE_SECURE": False,
        "SECURE_PROXY_SSL_HEADER": None}


def test_tls_can_be_switched_off_and_a_proxy_header_named(tmp_path: Path) -> None:
    values = _security_settings(tmp_path, DJANGO_ALLOWED_HOSTS="192.168.1.20",
                                BEHIND_TLS="false")
    assert values["SECURE_SSL_REDIRECT"] is False and values["SESSION_COOKIE_SECURE"] is False
    values = _security_settings(tmp_path, **PRODUCTION, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    bad = _run(tmp_path, ["-c", "import django; django.setup()"],
               SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https")
    assert bad.returncode != 0 and "SECURE_PROXY_SSL_HEADER" in bad.stderr


def test_health_probes_are_never_redirected(client: Client, settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    response = client.get("/accounts/login/")
    assert response.status_code == 301 and response["Location"].startswith("https://")
