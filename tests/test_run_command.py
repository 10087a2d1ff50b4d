"""The run command brings every process up, reports ready, and Ctrl-C stops all of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from django.conf import settings
from django.contrib.auth.models import User

from config.env import READ_FROM_ENV
from launcher import run as run_command
from launcher.processes import free_port
from launcher.run import (
    Stack,
    _already_ingested,
    _corpus_entry,
    _demo_accounts,
    _ensure_router,
    _external_redis_answers,
    _queue_verifier_training,
    _wait_ready,
    _warm_model,
    is_embedded_demo,
)
from modelsvc.models import RouterVersion
from modelsvc.verifier import DATA_CARD, MODEL_FOLDER
from retrieval.models import IngestFile
from retrieval.services import Selection, ingest_paths
from tests.conftest import SYNTHETIC_ARTICLES
from tests.modelsvc.doubles import ModelServerDouble, Reply, completion

pytestmark = [pytest.mark.model_server, pytest.mark.redis]


def _launch(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "launcher.run"], cwd=settings.BASE_DIR,
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _wait_for(log: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if re.search(pattern, text):
            return text
        if process.poll() is not None:
            pytest.fail(f"the run command exited ({process.returncode}):\n{text[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {pattern!r} within {timeout}s:\n{log.read_text()[-3000:]}")


def _interrupt(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    return children


def test_run_starts_everything_then_ctrl_c_stops_it_and_a_second_run_reuses_it(
        tmp_path: Path, local_model_dirs: dict[str, Path]) -> None:
    import json

    data = tmp_path / "data"
    data.mkdir()
    (data / "demo.jsonl").write_text("\n".join(json.dumps(a) for a in SYNTHETIC_ARTICLES))
    _router_questions(data)
    web_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in READ_FROM_ENV}
    env.update(VAR_DIR=str(tmp_path / "var"), MODEL_CACHE_DIR=str(settings.MODEL_CACHE_DIR),
               LOCAL_MODEL="tiny", EMBEDDED_REDIS_PORT=str(free_port()),
               LOCAL_MODEL_PORT=str(free_port()), WEB_PORT=str(web_port),
               LITERATURE_DATA_DIR=str(data), DEMO_CORPUS="demo.jsonl", BACKGROUND_CORPUS="none",
               HF_HUB_OFFLINE="1")
    log = tmp_path / "run-1.log"
    process = _launch(env, log)
    try:
        text = _wait_for(log, r"\[ready\s*\] open http", process, timeout=240)
    finally:
        if process.poll() is None:
            children = _interrupt(process)
    passwords = dict(re.findall(r"username: (\w+)\s+password: (\S+)", text))
    assert set(passwords) == {"clinician", "reviewer", "admin"}
    assert len(children) >= 6  # redis, model server, two workers, beat, web
    assert re.search(r"\[beat\s*\] starting Celery beat: the job reconciler every", text)
    assert (tmp_path / "var" / "redis" / "appendonly.aof").exists()  # queued jobs persist
    assert re.search(r"\[router\s*\] router \S+ active: held-out accuracy", text)
    # The model is loaded before anyone asks, and readiness is reported part by part.
    assert re.search(r"\[model\s*\] ready: one token in \d+ ms", text)
    for part in ("database", "redis", "model_server", "index"):
        assert re.search(rf"\[ready\s*\] {part}: ok \(\d+ ms\)", text), part
    # No MEDLINE files here, so the verifier is not trained, and the run says why.
    assert "not training the claim verifier" in text
    time.sleep(1)
    assert not [child for child in children if child.is_running()
                and child.status() != psutil.STATUS_ZOMBIE]
    assert "all processes stopped" in log.read_text()

    log2 = tmp_path / "run-2.log"
    process = _launch(env, log2)
    try:
        text2 = _wait_for(log2, r"\[ready\s*\] open http", process, timeout=240)
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=30) as web:
            ready = web.get("/readyz").json()
            assert ready["ready"] is True, ready
            login = web.get("/accounts/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
            response = web.post("/accounts/login/", data={
                "username": "clinician", "password": passwords["clinician"],
                "csrfmiddlewaretoken": token})
            assert response.status_code == 302 and response.headers["location"] == "/"
            assert "Ask a clinical question" in web.get("/").text
    finally:
        if process.poll() is None:
            _interrupt(process)
    assert "Demo accounts already exist" in text2
    assert "password:" not in text2
    assert "already indexed; nothing to ingest" in text2
    assert "[router" not in text2  # the router trained on the first start is reused


def _router_questions(data: Path, count: int = 12) -> None:
    """A few PubMedQA-style and exam questions: enough for the launcher to train a router."""
    import json

    (data / "pubmedqa").mkdir()
    (data / "exam").mkdir()
    topics = ["aspirin", "metformin", "statins", "vitamin D", "asthma", "sepsis", "stroke",
              "insulin", "warfarin", "smoking", "obesity", "pregnancy", "dialysis", "opioids"]
    (data / "pubmedqa" / "pqal_dev.json").write_text(json.dumps({
        str(1000 + n): {"QUESTION": f"Does {topic} therapy reduce mortality in a cohort study?"}
        for n, topic in enumerate(topics[:count])}))
    (data / "exam" / "mirage_medmcqa_mmlu.json").write_text(json.dumps({"medmcqa": {
        str(n): {"question": f"Which enzyme is the drug target of {topic} in textbook "
                             "pharmacology?", "options": {}, "answer": "A"}
        for n, topic in enumerate(topics[:count])}}))


def test_a_demo_corpus_entry_names_a_file_and_its_slice() -> None:
    assert _corpus_entry("pubmedqa/pqal_dev.json") == ("pubmedqa/pqal_dev.json", None, None)
    assert _corpus_entry("pubmed/a.xml.gz?topics=demo&limit=240") == (
        "pubmed/a.xml.gz", "demo", 240)
    with pytest.raises(ValueError, match="unknown option"):
        _corpus_entry("pubmed/a.xml.gz?topic=demo")
    with pytest.raises(ValueError, match="whole number"):
        _corpus_entry("pubmed/a.xml.gz?limit=many")


@pytest.mark.django_db(transaction=True)
def test_a_demo_slice_counts_as_indexed_for_the_demo_but_not_the_background(
        tmp_path: Path, synthetic_corpus: Path, settings: object) -> None:
    settings.INDEX_DIR = tmp_path / "index"  # type: ignore[attr-defined]
    ingest_paths([synthetic_corpus], fmt="jsonl", selection=Selection.parse(None, 2))
    assert _already_ingested(synthetic_corpus, partial_counts=True)
    assert not _already_ingested(synthetic_corpus)
    ingest_paths([synthetic_corpus], fmt="jsonl")
    assert _already_ingested(synthetic_corpus)
    assert IngestFile.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_first_start_trains_a_router_and_a_later_one_keeps_it(
        tmp_path: Path, settings: object, capsys: pytest.CaptureFixture[str]) -> None:
    settings.LITERATURE_DATA_DIR = tmp_path  # type: ignore[attr-defined]
    settings.VAR_DIR = tmp_path / "var"  # type: ignore[attr-defined]
    _router_questions(tmp_path)
    _ensure_router(settings)
    router = RouterVersion.objects.get(active=True)
    assert Path(router.path).is_file()
    assert "active: held-out accuracy" in capsys.readouterr().out
    _ensure_router(settings)
    assert RouterVersion.objects.count() == 1
    assert capsys.readouterr().out == ""


def test_the_first_start_trains_the_verifier_in_a_low_priority_background_process(
        tmp_path: Path, settings: object, shared_data_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings.LITERATURE_DATA_DIR = shared_data_dir  # type: ignore[attr-defined]
    settings.VAR_DIR = tmp_path / "var"  # type: ignore[attr-defined]
    settings.VERIFIER_MODEL, settings.VERIFIER_ENGINE = "", "auto"  # type: ignore[attr-defined]
    (tmp_path / "logs").mkdir()
    stack = Stack(tmp_path / "logs")
    try:
        _queue_verifier_training(stack, settings)
        assert [name for name, _ in stack.background] == ["verifier-training"]
        process = psutil.Process(stack.background[0][1].pid)
        assert process.nice() >= 10
        assert "train_verifier" in " ".join(process.cmdline())
        assert "training the claim verifier in the background" in capsys.readouterr().out
        assert stack.dead() == []  # its end is never taken for a crash of the stack
    finally:
        stack.stop()
    assert stack.finished_background()  # stopped with the rest


def test_no_verifier_training_starts_when_one_is_trained(tmp_path: Path, settings: object,
                                                         shared_data_dir: Path) -> None:
    settings.LITERATURE_DATA_DIR = shared_data_dir  # type: ignore[attr-defined]
    settings.VAR_DIR = tmp_path / "var"  # type: ignore[attr-defined]
    settings.VERIFIER_MODEL, settings.VERIFIER_ENGINE = "", "auto"  # type: ignore[attr-defined]
    trained = tmp_path / "var" / "verifiers" / "20261201-000000"
    (trained / MODEL_FOLDER).mkdir(parents=True)
    (trained / DATA_CARD).write_text("{}")
    stack = Stack(tmp_path)
    _queue_verifier_training(stack, settings)
    assert stack.background == []


# --- no account, no secret outside the embedded demo set-up ---------------------------------

def test_outside_the_embedded_set_up_no_account_is_created_and_no_password_printed(
        db: None, settings: object, capsys: pytest.CaptureFixture[str]) -> None:
    settings.REDIS_IS_EMBEDDED = False  # type: ignore[attr-defined]
    assert not is_embedded_demo()
    _demo_accounts()
    out = capsys.readouterr().out
    assert not User.objects.exists()
    assert "no demo accounts outside the embedded set-up" in out
    assert "python manage.py createsuperuser" in out
    assert "password:" not in out


def test_the_embedded_set_up_creates_the_demo_accounts_and_shows_their_passwords_once(
        db: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(run_command, "is_embedded_demo", lambda: True)
    _demo_accounts()
    assert sorted(User.objects.values_list("username", flat=True)) == [
        "admin", "clinician", "reviewer"]
    assert capsys.readouterr().out.count("password:") == 3
    _demo_accounts()
    assert "password:" not in capsys.readouterr().out


def test_an_external_redis_is_named_by_host_and_port_never_by_its_url(
        redis_server: str, settings: object, capsys: pytest.CaptureFixture[str]) -> None:
    port = settings.REDIS_URL.rsplit(":", 1)[-1].split("/")[0]  # type: ignore[attr-defined]
    settings.REDIS_URL = f"redis://:s3cret@127.0.0.1:{port}/0"  # type: ignore[attr-defined]
    assert _external_redis_answers()
    settings.REDIS_URL = "redis://user:s3cret@127.0.0.1:1/0"  # type: ignore[attr-defined]
    assert not _external_redis_answers()
    captured = capsys.readouterr()
    assert f"using the Redis at REDIS_URL (127.0.0.1:{port})" in captured.out
    assert "the Redis at REDIS_URL (127.0.0.1:1) does not answer" in captured.err
    assert "s3cret" not in captured.out + captured.err


# --- readiness and the model's warm-up, as ./run reports them -------------------------------

def test_a_part_that_is_not_ready_is_reported_with_what_to_do_and_no_url(
        db: None, tmp_path: Path, settings: object, capsys: pytest.CaptureFixture[str]) -> None:
    closed = free_port()
    settings.MODEL_BASE_URL = f"http://user:s3cret@127.0.0.1:{closed}/v1"  # type: ignore[attr-defined]
    settings.MODEL_SERVER_IS_EMBEDDED = False  # type: ignore[attr-defined]
    settings.INDEX_DIR = tmp_path / "no-index"  # type: ignore[attr-defined]

    assert not _wait_ready(f"http://127.0.0.1:{closed}", timeout=0, log_dir=tmp_path)

    out = capsys.readouterr().out
    assert re.search(r"\[ready\s*\] database: ok \(\d+ ms\)", out)
    assert re.search(r"\[NOT READY\s*\] model_server: The model server does not answer "
                     r"\(ConnectError\); check that the server at MODEL_BASE_URL is running\.",
                     out)
    assert re.search(r"\[NOT READY\s*\] index: No literature index is built yet", out)
    assert "s3cret" not in out and f":{closed}/v1" not in out


def test_the_warm_up_loads_the_model_with_one_token_and_a_failure_is_not_fatal(
        tmp_path: Path, settings: object, capsys: pytest.CaptureFixture[str]) -> None:
    with ModelServerDouble([Reply(body=completion("O", completion_tokens=1))]) as double:
        settings.MODEL_BASE_URL = double.base_url  # type: ignore[attr-defined]
        _warm_model(tmp_path)
        assert [(r["max_tokens"], r.get("stream", False)) for r in double.requests] == [
            (1, False)]
    assert re.search(r"\[model\s*\] ready: one token in \d+ ms", capsys.readouterr().out)

    with ModelServerDouble([Reply(body=completion("O"))], health_status=503) as double:
        settings.MODEL_BASE_URL = double.base_url  # type: ignore[attr-defined]
        _warm_model(tmp_path)
    out = capsys.readouterr().out
    assert "the one-token completion failed: The model server" in out
    assert "not healthy (HTTP 503)" in out
    assert f"The first question may wait while the model loads; see {tmp_path}/model-server.log" \
        in out
