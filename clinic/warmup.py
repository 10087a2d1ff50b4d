"""Warm-up at web start: load what the first question needs (the embedding model, the
literature index, the claim verifier) during the ASGI lifespan start-up (config/asgi.py), so a
web process accepts connections only once it is ready to answer at full speed, and the first
clinician's first token does not wait tens of seconds for a model load."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)


def warm_up() -> bool:
    """Load the models now; True if all loaded. A failure is logged, never raised: the first
    question then loads what failed here, and says why if it fails again."""
    from modelsvc.verifier import configured_engine, get_verifier
    from retrieval.embedding import embed_query
    from retrieval.errors import RetrievalError
    from retrieval.index_store import get_index

    began = time.monotonic()
    try:
        embed_query("warm-up")
        try:
            get_index()
        except RetrievalError:
            logger.info("warm-up: no literature index yet; it is loaded when one is built")
        if configured_engine() == "cross-encoder":
            get_verifier()
        logger.info("warm-up done in %.1fs", time.monotonic() - began)
        return True
    except Exception:
        logger.warning("warm-up failed; the first question loads the models instead",
                       exc_info=True)
        return False
    finally:
        connections.close_all()


async def lifespan(receive: Any, send: Any) -> None:
    """The ASGI lifespan protocol: warm up (WARM_UP_ON_START) before start-up completes."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if settings.WARM_UP_ON_START:
                await asyncio.to_thread(warm_up)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
