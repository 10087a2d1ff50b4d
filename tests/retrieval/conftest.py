"""Retrieval fixtures: a private index folder per test, so versions never leak between tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from retrieval.index_store import reset_loaded_index


@pytest.fixture
def index_dir(tmp_path: Path, settings: SettingsWrapper) -> Iterator[Path]:
    settings.INDEX_DIR = tmp_path / "index"
    reset_loaded_index()
    yield settings.INDEX_DIR
    reset_loaded_index()
