"""System checks that catch settings which are valid alone but unsafe together."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Warning, register


@register()
def visibility_timeout_covers_deep_consults(app_configs: Any, **kwargs: Any) -> list[Warning]:
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    if visibility >= settings.DEEP_CONSULT_TIME_LIMIT:
        return []
    return [Warning(
        f"CELERY_VISIBILITY_TIMEOUT ({visibility} s) is shorter than DEEP_CONSULT_TIME_LIMIT "
        f"({settings.DEEP_CONSULT_TIME_LIMIT} s): Redis hands a still-running deep consult to a "
        "second worker (its claim fencing keeps one result, but model calls are repeated).",
        hint="Raise CELERY_VISIBILITY_TIMEOUT above DEEP_CONSULT_TIME_LIMIT.",
        id="clinic.W001")]
