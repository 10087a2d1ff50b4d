"""/healthz says the process is up; /readyz says whether every dependency answers.

/healthz touches nothing (no database, Redis or model server): a load balancer may call it as
often as it likes. /readyz runs four cheap checks (``SELECT 1``, a Redis PING, the model
server's ``GET /v1/models`` and the loaded literature index), never a model completion, and
keeps the result for ``CACHE_SECONDS`` so a burst of probes costs one round of checks per
process. Its body never holds a URL, a host name or a credential: an anonymous caller sees
only whether each part is ready; a staff user also sees latencies, safe details and, for a
failing part, one sentence on what is wrong and what to do (written here, never an exception's
own text, which can name hosts). The full error goes to the log.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from clinic.roles import is_admin
from modelsvc.client import ClientConfig
from retrieval.index_store import current_status

logger = logging.getLogger(__name__)

CACHE_SECONDS = 5.0
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")


class CheckFailed(Exception):
    """A check's failure, with a sentence that is safe to show a staff user."""


def _safe(text: str) -> str:
    """Belt and braces: whatever a sentence says, no URL (nor the credentials in one) leaves."""
    return _URL.sub("<url>", text)


def _check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        raise CheckFailed(f"The database does not answer ({type(error).__name__}); check that "
                          "it is running and that DATABASE_URL is right.") from error
    return {"engine": connection.vendor}


def _check_redis() -> dict[str, Any]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        hint = ("The bundled Redis does not answer; start ./run again (it starts the bundled "
                "Redis)" if settings.REDIS_IS_EMBEDDED
                else "The Redis at REDIS_URL does not answer; check that it is running and "
                "reachable from here")
        raise CheckFailed(f"{hint} ({type(error).__name__}).") from error
    finally:
        client.close()
    return {"embedded": settings.REDIS_IS_EMBEDDED}


def _check_model_server() -> dict[str, Any]:
    """Reachability only: the server lists its models. No completion is ever run here."""
    config = ClientConfig.from_settings()
    timeout = float(settings.MODEL_READY_TIMEOUT)
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    try:
        response = httpx.get(f"{config.base_url}/models", headers=headers,
                             timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)))
    except httpx.TimeoutException as error:
        raise CheckFailed(f"The model server did not list its models within {timeout:g}s; it "
                          "may be overloaded or still starting.") from error
    except httpx.HTTPError as error:
        where = ("start ./run again (it starts the local model server)"
                 if settings.MODEL_SERVER_IS_EMBEDDED
                 else "check that the server at MODEL_BASE_URL is running")
        raise CheckFailed(f"The model server does not answer ({type(error).__name__}); "
                          f"{where}.") from error
    if response.status_code in (401, 403):
        raise CheckFailed(f"The model server refused the request (HTTP {response.status_code}); "
                          "check MODEL_API_KEY.")
    if response.status_code != 200:
        raise CheckFailed(f"The model server answered HTTP {response.status_code} when asked "
                          "for its models; it may still be starting.")
    try:
        listed = len(response.json().get("data") or [])
    except (ValueError, AttributeError):
        listed = None
    return {"embedded": settings.MODEL_SERVER_IS_EMBEDDED, "models_listed": listed}


def _check_index() -> dict[str, Any]:
    status = current_status()
    if not status.get("loaded"):
        raise CheckFailed(status.get("message") or "No literature index is built yet; run "
                          "`python manage.py ingest PATH` (./run does it for the demo corpus).")
    return {key: status.get(key) for key in ("version", "articles", "chunks", "index_type",
                                             "embedding_model", "built_at", "on_gpu")}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": _check_database,
    "redis": _check_redis,
    "model_server": _check_model_server,
    "index": _check_index,
}


@dataclass
class Report:
    checked_at: float
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(check["ready"] for check in self.checks.values())


_lock = threading.Lock()
_cached: Report | None = None


def run_checks() -> Report:
    """Run every check now, each failure one readable sentence, never an exception."""
    report = Report(checked_at=time.monotonic())
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            result: dict[str, Any] = {"ready": True, **check()}
        except CheckFailed as error:
            logger.warning("readiness check %s failed: %s (%r)", name, error, error.__cause__)
            result = {"ready": False, "error": _safe(str(error))}
        except Exception as error:  # any other failure is a not-ready part, never a 500
            logger.warning("readiness check %s failed", name, exc_info=True)
            result = {"ready": False, "error": f"The {name.replace('_', ' ')} check failed "
                      f"({type(error).__name__}); see the web server's log."}
        result["ms"] = round((time.monotonic() - started) * 1000)
        report.checks[name] = result
    return report


def readiness(max_age: float = CACHE_SECONDS) -> Report:
    """The last report when it is younger than max_age seconds, else a fresh one."""
    global _cached
    with _lock:  # one round of checks at a time; the others wait and share its result
        if _cached is None or time.monotonic() - _cached.checked_at >= max_age:
            _cached = run_checks()
        return _cached


def forget_readiness() -> None:
    """Drop the cached report (tests)."""
    global _cached
    with _lock:
        _cached = None


def _sees_details(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and (getattr(user, "is_staff", False) or is_admin(user)))


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    report = readiness()
    body: dict[str, Any] = {"status": "ready" if report.ready else "not ready",
                            "ready": report.ready}
    if _sees_details(request.user):
        body["checks"] = {name: _safe_detail(check) for name, check in report.checks.items()}
        body["checked_s_ago"] = round(time.monotonic() - report.checked_at, 1)
    else:
        body["checks"] = {name: {"ready": check["ready"]} for name, check in report.checks.items()}
    return JsonResponse(body, status=200 if report.ready else 503)


def _safe_detail(check: dict[str, Any]) -> dict[str, Any]:
    return {key: _safe(value) if isinstance(value, str) else value
            for key, value in check.items()}
