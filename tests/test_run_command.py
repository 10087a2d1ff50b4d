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

from config.env import READ_FROM_ENV
from launcher.processes import free_port
from tests.conftest import SYNTHETIC_ARTICLES

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
    assert len(children) >= 4  # redis, model server, worker, web
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
