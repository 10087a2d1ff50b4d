"""The ASGI application: Django for HTTP, plus the lifespan start-up that loads what a question
needs (the embedding model, the index, the verifier) before the server accepts a connection,
so no clinician's first question waits for it (clinic/warmup.py; WARM_UP_ON_START). A server
started with `--lifespan off` skips it and loads them on the first question instead."""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from clinic.warmup import lifespan  # noqa: E402 (needs the settings configured above)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    else:
        await django_application(scope, receive, send)
