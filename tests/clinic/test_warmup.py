"""A web process loads the embedding model and the index during its ASGI lifespan start-up,
before it accepts a connection, not on the first question (clinic/warmup.py, config/asgi.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from clinic import warmup
from retrieval import embedding, index_store


@pytest.fixture
def cold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "_embedder", None)
    monkeypatch.setattr(embedding, "_embedder_name", None)
    index_store.reset_loaded_index()


def _start_and_stop(application: Any) -> list[tuple[str, bool]]:
    """Drive the lifespan protocol as uvicorn does; each reply with whether the embedding
    model was loaded when it was sent."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    replies: list[tuple[str, bool]] = []

    async def receive() -> dict[str, str]:
        return next(incoming)

    async def send(message: dict[str, str]) -> None:
        replies.append((message["type"], embedding._embedder is not None))

    async def run() -> None:
        await application({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    async_to_sync(run)()
    return replies


def test_start_up_completes_only_once_the_embedder_and_index_are_loaded(
        tiny_index: Path, cold: None, settings: Any) -> None:
    from config.asgi import application

    settings.WARM_UP_ON_START = True
    replies = _start_and_stop(application)
    assert replies == [("lifespan.startup.complete", True), ("lifespan.shutdown.complete", True)]
    assert index_store._loaded is not None and index_store._loaded_key is not None


def test_no_warm_up_when_switched_off(cold: None, settings: Any) -> None:
    from config.asgi import application

    settings.WARM_UP_ON_START = False
    assert _start_and_stop(application) == [("lifespan.startup.complete", False),
                                            ("lifespan.shutdown.complete", False)]


def test_a_warm_up_without_an_index_still_loads_the_embedder(tmp_path: Path, cold: None,
                                                             settings: Any,
                                                             transactional_db: None) -> None:
    settings.INDEX_DIR = tmp_path / "no-index"
    assert warmup.warm_up() is True
    assert embedding._embedder is not None and index_store._loaded is None


def test_a_failed_warm_up_is_logged_and_start_up_goes_on(
        cold: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(text: str) -> None:
        raise RuntimeError("no model here")

    monkeypatch.setattr("retrieval.embedding.embed_query", broken)
    assert warmup.warm_up() is False
    assert "warm-up failed" in caplog.text
