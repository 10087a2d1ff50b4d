"""A web process loads the embedding model and the index when it starts, not on the first
question (clinic/warmup.py, started from config/asgi.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clinic import warmup
from retrieval import embedding, index_store


@pytest.fixture
def cold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "_embedder", None)
    monkeypatch.setattr(embedding, "_embedder_name", None)
    index_store.reset_loaded_index()
    monkeypatch.setattr(warmup, "_started", warmup.threading.Event())
    monkeypatch.setattr(warmup, "finished", warmup.threading.Event())


def test_the_warm_up_loads_the_embedder_and_the_index(tiny_index: Path, cold: None,
                                                      settings: Any) -> None:
    settings.WARM_UP_ON_START = True
    assert warmup.start_warm_up() is True
    assert warmup.start_warm_up() is False  # once per process
    assert warmup.finished.wait(120)
    assert embedding._embedder is not None
    assert index_store._loaded is not None and index_store._loaded_key is not None


def test_no_warm_up_when_switched_off(cold: None, settings: Any) -> None:
    settings.WARM_UP_ON_START = False
    assert warmup.start_warm_up() is False
    assert not warmup.finished.wait(0.2)
    assert embedding._embedder is None


def test_a_warm_up_without_an_index_still_loads_the_embedder(tmp_path: Path, cold: None,
                                                             settings: Any,
                                                             transactional_db: None) -> None:
    settings.INDEX_DIR = tmp_path / "no-index"
    warmup.warm_up()
    assert embedding._embedder is not None and index_store._loaded is None
