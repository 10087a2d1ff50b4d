"""The run command: prepare what is missing, start every process, stop them all on Ctrl-C.

Start order: database migrations and demo accounts, the bundled Redis (when REDIS_URL is
unset), the local model server (when MODEL_BASE_URL is unset), one Celery worker, the demo
corpus, then the web server; it waits for /readyz before printing the URL. A second run
reuses the virtualenv, the converted model, the accounts and the indexed articles.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from launcher.processes import (
    ProcessStartError,
    port_is_open,
    start_embedded_redis,
    start_model_server,
    stop_process,
    wait_for_http,
)
from modelsvc.local_models import LocalModelError, ensure_smollm2, ensure_tiny_llama

# Django and the apps' models are imported inside the functions below: this module is loaded
# before main() has configured settings and called django.setup().

STATUS_WIDTH = 12


def say(label: str, message: str) -> None:
    print(f"[{label:<{STATUS_WIDTH}}] {message}", flush=True)


def fail(message: str) -> None:
    print(f"\nCannot start: {message}", file=sys.stderr, flush=True)


@dataclass
class Stack:
    log_dir: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    def log_file(self, name: str) -> IO[bytes]:
        handle = open(self.log_dir / f"{name}.log", "ab")
        self.logs.append(handle)
        return handle

    def add(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.processes.append((name, process))

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, stdout=self.log_file(name), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.add(name, process)
        return process

    def dead(self) -> list[tuple[str, int]]:
        return [(name, process.returncode) for name, process in self.processes
                if process.poll() is not None]

    def stop(self) -> None:
        for name, process in reversed(self.processes):
            if process.poll() is None:
                say("stop", name)
                stop_process(process)
        for handle in self.logs:
            handle.close()


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from django.core.exceptions import ImproperlyConfigured

    try:
        import django

        django.setup()
        from django.conf import settings
    except ImproperlyConfigured as error:
        fail(str(error))
        return 2

    var_dir = Path(settings.VAR_DIR)
    log_dir = var_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(log_dir)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        return _start(stack, settings)
    except KeyboardInterrupt:
        print(flush=True)
        say("stop", "stopping everything (Ctrl-C)")
        return 0
    finally:
        stack.stop()
        say("stop", "all processes stopped")


def _start(stack: Stack, settings: object) -> int:
    from django.conf import settings as django_settings
    from django.core.management import call_command
    from django.db import OperationalError

    from training.serving import served_dir
    from training.tasks import TRAINING_QUEUE

    bin_dir = Path(sys.executable).parent
    s = django_settings

    try:
        say("database", f"migrating ({s.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]})")
        call_command("migrate", interactive=False, verbosity=0)
    except OperationalError as error:
        fail(f"the database does not answer ({error}). Check DATABASE_URL, or unset it to use "
             "SQLite.")
        return 2
    call_command("create_demo_accounts")

    try:
        if s.REDIS_IS_EMBEDDED:
            say("redis", f"starting the bundled Redis on port {s.EMBEDDED_REDIS_PORT}")
            stack.add("redis", start_embedded_redis(
                s.EMBEDDED_REDIS_PORT, Path(s.VAR_DIR) / "redis", log=stack.log_file("redis")))
        else:
            host_port = s.REDIS_URL.split("//", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
            host, _, port = host_port.partition(":")
            if not port_is_open(host or "127.0.0.1", int(port or 6379), timeout=2):
                fail(f"the Redis at REDIS_URL ({s.REDIS_URL}) does not answer; start it, or "
                     "unset REDIS_URL to use the bundled one.")
                return 2
            say("redis", f"using {s.REDIS_URL}")

        if s.MODEL_SERVER_IS_EMBEDDED:
            say("model", f"preparing the local model ({s.LOCAL_MODEL}); the first run converts "
                "it once")
            builder = ensure_smollm2 if s.LOCAL_MODEL == "smollm2" else ensure_tiny_llama
            try:
                folder = builder(Path(s.MODEL_CACHE_DIR))
            except LocalModelError as error:
                fail(str(error))
                return 2
            batching = " with continuous batching" if s.LOCAL_MODEL_CONTINUOUS_BATCHING else ""
            say("model", f"starting transformers serve on port {s.LOCAL_MODEL_PORT}{batching}")
            server = start_model_server(
                folder, s.LOCAL_MODEL_PORT, log=stack.log_file("model-server"),
                continuous_batching=s.LOCAL_MODEL_CONTINUOUS_BATCHING,
                kv_blocks=s.LOCAL_MODEL_KV_BLOCKS, adapters_dir=served_dir())
            stack.add("model server", server)
            wait_for_http(f"http://127.0.0.1:{s.LOCAL_MODEL_PORT}/health", server, 180,
                          "The local model server")
        else:
            say("model", f"using {s.MODEL_BASE_URL} (model {s.MODEL_NAME})")

        say("worker", "starting one Celery worker (default and training queues)")
        stack.spawn("worker", [str(bin_dir / "celery"), "-A", "config", "worker",
                               "--concurrency", "1", "--loglevel", "INFO",
                               "-Q", f"celery,{TRAINING_QUEUE}",
                               "--hostname", f"worker-{os.getpid()}@%h"])

        _load_demo_corpus(s)

        say("web", f"starting uvicorn on http://{s.WEB_HOST}:{s.WEB_PORT}/")
        call_command("collectstatic", interactive=False, verbosity=0)
        web = stack.spawn("web", [str(bin_dir / "uvicorn"), "config.asgi:application",
                                  "--host", s.WEB_HOST, "--port", str(s.WEB_PORT),
                                  "--workers", str(s.WEB_WORKERS), "--log-level", "warning"])
        base = f"http://127.0.0.1:{s.WEB_PORT}" if s.WEB_HOST in {"0.0.0.0", "127.0.0.1"} \
            else f"http://{s.WEB_HOST}:{s.WEB_PORT}"
        wait_for_http(f"{base}/healthz", web, 60, "The web server")
    except ProcessStartError as error:
        fail(str(error))
        return 2

    ready = _wait_ready(base, timeout=120)
    print(flush=True)
    if ready:
        say("ready", f"open {base}/ and log in (demo accounts above). Ctrl-C stops everything.")
    else:
        say("not ready", f"the site is up at {base}/ but some checks fail (see above); logs are "
            f"in {stack.log_dir}. Ctrl-C stops everything.")
    while True:
        time.sleep(1)
        dead = stack.dead()
        if dead:
            name, code = dead[0]
            fail(f"{name} stopped unexpectedly (exit code {code}); see "
                 f"{stack.log_dir}/{name.replace(' ', '-')}.log. Stopping the rest.")
            return 1


def _load_demo_corpus(s: object) -> None:
    from django.conf import settings

    data_dir = Path(settings.LITERATURE_DATA_DIR)
    demo = [data_dir / name for name in settings.DEMO_CORPUS]
    background = [data_dir / name for name in settings.BACKGROUND_CORPUS]
    missing = [str(path) for path in demo + background if not path.exists()]
    if missing:
        say("literature", "not found: " + ", ".join(missing) + ". Set LITERATURE_DATA_DIR to "
            "your PubMed/PubMedQA files, or run `python manage.py ingest PATH`.")
    demo = [path for path in demo if path.exists() and not _already_ingested(path)]
    background = [path for path in background if path.exists() and not _already_ingested(path)]
    if not demo and not background:
        say("literature", "the corpus files are already indexed; nothing to ingest")
        return
    from retrieval.services import ingest_paths

    if demo:
        say("literature", f"indexing the demo corpus ({', '.join(p.name for p in demo)}); "
            "already indexed articles are skipped")
        run = ingest_paths(demo, use_celery=False)
        say("literature", f"demo corpus ready: {run}")
    if background:
        ingest_paths(background, use_celery=True)
        say("literature", f"{len(background)} more file(s) are being indexed in the background "
            "by the worker (progress in the admin, Ingest runs)")


def _already_ingested(path: Path) -> bool:
    """A file ingested completely, unchanged since, is not read again on the next run."""
    from datetime import UTC, datetime

    from retrieval.models import IngestFile

    stat = path.stat()
    modified = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
    return IngestFile.objects.filter(
        path=str(path.resolve()), status=IngestFile.Status.DONE, bytes_total=stat.st_size,
        finished_at__gt=modified).exists()


def _wait_ready(base: str, timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    report: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base}/readyz", timeout=30)
            body = response.json()
            report = body.get("checks", {})
            if body.get("ready"):
                for name, check in report.items():
                    say("ready", f"{name}: ok ({check.get('ms')} ms)")
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(2)
    for name, check in report.items():
        if check.get("ready"):
            say("ready", f"{name}: ok")
        else:
            say("NOT READY", f"{name}: {check.get('error')}")
    return False


if __name__ == "__main__":
    sys.exit(main())
