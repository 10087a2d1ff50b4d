"""/healthz says the process is up; /readyz says every dependency answers, in JSON.

The run command waits on /readyz, so each failing check carries one sentence saying
what is wrong and what to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from modelsvc.client import get_client
from retrieval.index_store import current_status

logger = logging.getLogger(__name__)


def _check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"engine": connection.vendor}


def _check_redis() -> dict[str, Any]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        hint = ("start ./run again (it starts the bundled Redis)" if settings.REDIS_IS_EMBEDDED
                else "check that the Redis at REDIS_URL is running")
        raise RuntimeError(
            f"Redis at {settings.REDIS_URL} does not answer ({error}); {hint}.") from error
    finally:
        client.close()
    return {"embedded": settings.REDIS_IS_EMBEDDED}


def _check_model_server() -> dict[str, Any]:
    return get_client().check_ready(timeout=settings.MODEL_READY_TIMEOUT)


def _check_index() -> dict[str, Any]:
    status = current_status()
    if not status.get("loaded"):
        raise RuntimeError(status.get("message") or "No literature index is built yet; run "
                           "`python manage.py ingest PATH` (./run does it for the demo corpus).")
    return status


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": _check_database,
    "redis": _check_redis,
    "model_server": _check_model_server,
    "index": _check_index,
}


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    results: dict[str, dict[str, Any]] = {}
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            detail = check()
            results[name] = {"ready": True, **detail}
        except Exception as error:  # every failure becomes one readable line, never a 500
            logger.warning("readiness check %s failed: %s", name, error)
            results[name] = {"ready": False, "error": str(error)}
        results[name]["ms"] = round((time.monotonic() - started) * 1000)
    ready = all(result["ready"] for result in results.values())
    return JsonResponse({"ready": ready, "checks": results}, status=200 if ready else 503)
