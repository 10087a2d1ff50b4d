"""Warm-up at web start: load what the first question needs (the embedding model, the
literature index, the claim verifier) in a background thread, so the first clinician's first
token does not wait tens of seconds for it. The server answers /healthz at once meanwhile; a
question that comes before the warm-up ends waits for the same loads (each is loaded once,
under a lock)."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

_started = threading.Event()
finished = threading.Event()


def warm_up() -> None:
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
    except Exception:  # the first question loads whatever failed here, and says why
        logger.warning("warm-up failed; the first question loads the models instead",
                       exc_info=True)
    finally:
        connections.close_all()
        finished.set()


def is_warming() -> bool:
    """A warm-up was started in this process and has not ended yet."""
    return _started.is_set() and not finished.is_set()


def start_warm_up() -> bool:
    """Start the warm-up thread once per process (WARM_UP_ON_START); True if started now."""
    if not settings.WARM_UP_ON_START or _started.is_set():
        return False
    _started.set()
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    return True
