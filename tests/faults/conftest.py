"""Fault fixtures: a Redis of the suite's own (a case may SIGKILL it), this process's Celery
app pointed at it, and a `Lab` that starts and kills the case's processes on the test
database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from retrieval.index_store import reset_loaded_index
from tests.conftest import subprocess_env
from tests.faults.cases import Lab, PrivateRedis, celery_on


@pytest.fixture(scope="session")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path_factory.mktemp("fault-redis"))
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def fault_index_dir(tmp_path: Path, settings: Any) -> Iterator[Path]:
    """A private index folder (the workers get it through INDEX_DIR)."""
    settings.INDEX_DIR = tmp_path / "index"
    reset_loaded_index()
    yield settings.INDEX_DIR
    reset_loaded_index()


@pytest.fixture
def lab(transactional_db: None, fault_redis: PrivateRedis, tmp_path: Path) -> Iterator[Lab]:
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip("worker processes cannot see an in-memory SQLite test database; "
                    "config/settings_test.py makes it a file")
    with celery_on(fault_redis.url), Lab(tmp_path / "lab", fault_redis, subprocess_env) as lab:
        yield lab
