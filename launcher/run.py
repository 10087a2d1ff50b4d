"""The run command: prepare what is missing, start every process, stop them all on Ctrl-C.

Start order: database migrations and (embedded set-up only) demo accounts, the bundled Redis
(when REDIS_URL is unset; it keeps queued jobs in an append-only file under VAR_DIR/redis), the
local model server (when MODEL_BASE_URL is unset; one one-token completion loads the model, so
the first question does not wait for it), two Celery workers and Celery beat (which
runs the job reconciler every few minutes), the demo corpus, the question router (trained on
first start, about 30 s), then the web server; it waits for /readyz before printing the URL and
each part's latency (or what to do about a part that is not ready). On
first start it also trains the claim verifier in a background process (about 16 min on 2 cores,
low CPU priority) that never blocks a request; answers use it once it is written. A second run
reuses the virtualenv, the converted model, the accounts, the indexed articles, the router and
the verifier.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import parse_qs

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
# The processes the others depend on, stopped last, in this order.
SERVICES = ("model server", "redis")
BACKGROUND_NICENESS = 10
WARM_UP_SECONDS = 300.0  # loading SmolLM2 on a busy 2-core machine takes well under this


def say(label: str, message: str) -> None:
    print(f"[{label:<{STATUS_WIDTH}}] {message}", flush=True)


def fail(message: str) -> None:
    print(f"\nCannot start: {message}", file=sys.stderr, flush=True)


@dataclass
class Stack:
    log_dir: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    # Jobs that end on their own (verifier training): their exit is reported, never fatal.
    background: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
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

    def spawn_background(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, stdout=self.log_file(name), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        # Low CPU priority, so the clinician's requests and the worker come first (set from
        # here: a preexec_fn is unsafe in a process that already runs torch's threads).
        os.setpriority(os.PRIO_PROCESS, process.pid, BACKGROUND_NICENESS)
        self.background.append((name, process))
        return process

    def dead(self) -> list[tuple[str, int]]:
        return [(name, process.returncode) for name, process in self.processes
                if process.poll() is not None]

    def finished_background(self) -> list[tuple[str, int]]:
        """Background jobs that ended since the last call (each reported once)."""
        finished = [(name, process.returncode) for name, process in self.background
                    if process.poll() is not None]
        self.background = [(name, process) for name, process in self.background
                           if process.poll() is None]
        return finished

    def stop(self) -> None:
        """Everything that uses Redis and the model server first (all at once: each may take
        its grace period, and one after another they would take a minute), then the model
        server, then Redis last."""
        running = [(name, process) for name, process in [*self.background,
                                                        *reversed(self.processes)]
                   if process.poll() is None]
        waves = [[(name, process) for name, process in running if name not in SERVICES]] + \
            [[(name, process) for name, process in running if name == service]
             for service in SERVICES]
        for wave in waves:
            for name, _ in wave:
                say("stop", name)
            if wave:
                with ThreadPoolExecutor(max_workers=len(wave)) as pool:
                    list(pool.map(stop_process, [process for _, process in wave]))
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

    # SIGINT too: a process started in the background by a non-interactive shell (a script's
    # `./run &`) inherits SIGINT ignored, and Python then leaves it so; Ctrl-C or `kill -INT`
    # must still stop everything.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
    from django.core.management.base import SystemCheckError
    from django.db import OperationalError

    from training.serving import served_dir

    bin_dir = Path(sys.executable).parent
    s = django_settings

    try:
        say("database", f"migrating ({s.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]})")
        call_command("migrate", interactive=False, verbosity=0)
    except OperationalError as error:
        fail(f"the database does not answer ({error}). Check DATABASE_URL, or unset it to use "
             "SQLite.")
        return 2
    except SystemCheckError as error:
        fail(f"the settings do not fit together.\n{error}")
        return 2
    _demo_accounts()

    try:
        if s.REDIS_IS_EMBEDDED:
            say("redis", f"starting the bundled Redis on port {s.EMBEDDED_REDIS_PORT}")
            stack.add("redis", start_embedded_redis(
                s.EMBEDDED_REDIS_PORT, Path(s.VAR_DIR) / "redis", log=stack.log_file("redis")))
        else:
            if not _external_redis_answers():
                return 2

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
            _warm_model(stack.log_dir)
        else:
            say("model", f"using {s.MODEL_BASE_URL} (model {s.MODEL_NAME})")

        # Two workers, so a deep consult never waits behind an hour of MEDLINE indexing.
        say("worker", "starting two Celery workers: deep consults; ingest, exports, "
            "evaluation and training")
        stack.spawn("worker", [str(bin_dir / "celery"), "-A", "config", "worker",
                               "--concurrency", "1", "--loglevel", "INFO",
                               "-Q", s.INTERACTIVE_QUEUE,
                               "--hostname", f"interactive-{os.getpid()}@%h"])
        stack.spawn("bulk-worker", [str(bin_dir / "celery"), "-A", "config", "worker",
                                    "--concurrency", "1", "--loglevel", "INFO",
                                    "-Q", f"{s.BULK_QUEUE},{s.TRAINING_QUEUE}",
                                    "--hostname", f"bulk-{os.getpid()}@%h"])
        # Each worker re-queues lost jobs when it starts; beat does it every few minutes.
        say("beat", f"starting Celery beat: the job reconciler every "
            f"{s.RECONCILE_INTERVAL_SECONDS} s")
        stack.spawn("beat", [str(bin_dir / "celery"), "-A", "config", "beat",
                             "--loglevel", "INFO",
                             "--schedule", str(Path(s.VAR_DIR) / "celerybeat-schedule")])

        _load_demo_corpus(s)
        _ensure_router(s)
        _queue_verifier_training(stack, s)

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

    ready = _wait_ready(base, timeout=120, log_dir=stack.log_dir)
    print(flush=True)
    if ready:
        accounts = "demo accounts above" if is_embedded_demo() else "your own account"
        say("ready", f"open {base}/ and log in ({accounts}). Ctrl-C stops everything.")
    else:
        say("not ready", f"the site is up at {base}/ but some checks fail (see above); logs are "
            f"in {stack.log_dir}. Ctrl-C stops everything.")
    while True:
        time.sleep(1)
        for name, code in stack.finished_background():
            if code == 0:
                say("verifier", "the claim verifier is trained; new answers are checked with it")
            else:
                say("verifier", f"{name} failed (exit code {code}); see {stack.log_dir}/"
                    f"{name}.log. Answers keep the lexical check; retry with `python "
                    "manage.py train_verifier`.")
        dead = stack.dead()
        if dead:
            name, code = dead[0]
            fail(f"{name} stopped unexpectedly (exit code {code}); see "
                 f"{stack.log_dir}/{name.replace(' ', '-')}.log. Stopping the rest.")
            return 1


def is_embedded_demo() -> bool:
    """SQLite in VAR_DIR and the bundled Redis: the one set-up where ./run may create demo
    accounts and print their passwords."""
    from django.conf import settings

    return bool(settings.REDIS_IS_EMBEDDED) and \
        settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"


def _demo_accounts() -> None:
    """Create the demo accounts (their passwords printed once) in the embedded set-up only: a
    deployment gets no account it did not ask for, and no password in a log."""
    from django.core.management import call_command

    if is_embedded_demo():
        call_command("create_demo_accounts")
    else:
        say("accounts", "no demo accounts outside the embedded set-up (DATABASE_URL or "
            "REDIS_URL is set); create an admin with `python manage.py createsuperuser`")


def _external_redis_answers() -> bool:
    """Whether the Redis at REDIS_URL listens; names only its host and port, since the URL
    may hold a password."""
    from django.conf import settings

    host_port = settings.REDIS_URL.split("//", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = host_port.partition(":")
    if not port_is_open(host or "127.0.0.1", int(port or 6379), timeout=2):
        fail(f"the Redis at REDIS_URL ({host_port}) does not answer; start it, or unset "
             "REDIS_URL to use the bundled one.")
        return False
    say("redis", f"using the Redis at REDIS_URL ({host_port})")
    return True


def _corpus_entry(entry: str) -> tuple[str, str | None, int | None]:
    """`pubmed/file.xml.gz?topics=demo&limit=200` -> (path, topics, limit)."""
    name, _, query = entry.partition("?")
    options = parse_qs(query)
    unknown = set(options) - {"topics", "limit"}
    if unknown:
        raise ValueError(f"DEMO_CORPUS entry {entry!r}: unknown option(s) {sorted(unknown)}; "
                         "use topics= and limit=.")
    topics = options.get("topics", [None])[0]
    raw_limit = options.get("limit", [None])[0]
    try:
        limit = int(raw_limit) if raw_limit is not None else None
    except ValueError:
        raise ValueError(f"DEMO_CORPUS entry {entry!r}: limit must be a whole number.") from None
    return name, topics, limit


def _load_demo_corpus(s: object) -> None:
    from django.conf import settings

    from retrieval.services import IngestError, Selection, ingest_paths

    data_dir = Path(settings.LITERATURE_DATA_DIR)
    demo: list[tuple[Path, Selection | None]] = []
    for entry in settings.DEMO_CORPUS:
        try:
            name, topics, limit = _corpus_entry(entry)
            demo.append((data_dir / name, Selection.parse(topics, limit)))
        except (ValueError, IngestError) as error:
            say("literature", f"skipping a demo corpus entry: {error}")
    background = [data_dir / name for name in settings.BACKGROUND_CORPUS]
    missing = [str(path) for path in [p for p, _ in demo] + background if not path.exists()]
    if missing:
        say("literature", "not found: " + ", ".join(missing) + ". Set LITERATURE_DATA_DIR to "
            "your PubMed/PubMedQA files, or run `python manage.py ingest PATH`.")
    demo = [(path, selection) for path, selection in demo if path.exists()
            and not _already_ingested(path, partial_counts=selection is not None)]
    background = [path for path in background if path.exists() and not _already_ingested(path)]
    if not demo and not background:
        say("literature", "the corpus files are already indexed; nothing to ingest")
        return
    if demo:
        names = ", ".join(path.name + (" (a slice on common clinical topics)" if selection
                                       else "") for path, selection in demo)
        say("literature", f"indexing the demo corpus ({names}); already indexed articles are "
            "skipped")
        whole = [path for path, selection in demo if selection is None]
        if whole:
            say("literature", f"demo corpus: {ingest_paths(whole, use_celery=False)}")
        for path, selection in demo:
            if selection is not None:
                run = ingest_paths([path], use_celery=False, selection=selection)
                say("literature", f"demo corpus: {run}")
    if background:
        ingest_paths(background, use_celery=True)
        say("literature", f"{len(background)} more file(s) are being indexed in the background "
            "by the worker (progress on the Literature page)")


def _already_ingested(path: Path, *, partial_counts: bool = False) -> bool:
    """A file ingested completely, unchanged since, is not read again on the next run; a slice
    of it (a demo selection) counts only when `partial_counts`."""
    from datetime import UTC, datetime

    from retrieval.models import IngestFile
    from retrieval.services import PARTIAL_INGEST

    stat = path.stat()
    modified = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
    done = IngestFile.objects.filter(
        path=str(path.resolve()), status=IngestFile.Status.DONE, bytes_total=stat.st_size,
        finished_at__gt=modified)
    if not partial_counts:
        done = done.exclude(issues__has_key=PARTIAL_INGEST)
    return done.exists()


def _ensure_router(s: object) -> None:
    """Train the question router when none is active, so routing has real confidence."""
    from django.conf import settings

    from modelsvc.models import RouterVersion
    from modelsvc.router_training import RouterTrainingError, train_router

    if not settings.TRAIN_ON_FIRST_RUN or RouterVersion.objects.filter(active=True).exists():
        return
    say("router", "training the question router (first start, about 30 s)")
    started = time.monotonic()
    try:
        row = train_router(data_dir=Path(settings.LITERATURE_DATA_DIR))
    except RouterTrainingError as error:
        say("router", f"not trained: {error} Questions take the literature path until you run "
            "`python manage.py train_router`.")
        return
    say("router", f"router {row.version} active: held-out accuracy {row.accuracy:.3f} "
        f"({time.monotonic() - started:.0f} s)")


def _queue_verifier_training(stack: Stack, s: object) -> None:
    """Train the claim verifier in the background when none exists and none is configured."""
    from django.conf import settings

    from modelsvc.verifier import latest_trained_verifier
    from modelsvc.verifier_training import MEDLINE_FILES

    if not settings.TRAIN_ON_FIRST_RUN or settings.VERIFIER_MODEL \
            or settings.VERIFIER_ENGINE != "auto" or latest_trained_verifier() is not None:
        return
    data_dir = Path(settings.LITERATURE_DATA_DIR)
    missing = [name for name in MEDLINE_FILES if not (data_dir / name).exists()]
    if missing:
        say("verifier", f"not training the claim verifier: {', '.join(missing)} not found "
            "under LITERATURE_DATA_DIR; answers are checked lexically.")
        return
    stack.spawn_background("verifier-training", [
        sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "train_verifier"])
    say("verifier", "training the claim verifier in the background (about 16 min on 2 cores, "
        "low priority; log in " + str(stack.log_dir / "verifier-training.log") + "). Until it "
        "finishes answers are checked lexically; then the trained verifier is the default.")


def _warm_model(log_dir: Path) -> None:
    """One one-token completion right after the embedded model server starts: the server loads
    the model on its first request, and /readyz never runs a completion, so without this the
    first clinician's question would pay for the loading. A failure is reported, not fatal."""
    from modelsvc.client import get_client
    from modelsvc.errors import ModelServiceError

    say("model", "loading the model with a one-token completion")
    try:
        warm = get_client().check_ready(timeout=WARM_UP_SECONDS)
    except ModelServiceError as error:
        say("model", f"the one-token completion failed: {error.message} The first question may "
            f"wait while the model loads; see {log_dir}/model-server.log.")
        return
    say("model", f"ready: one token in {warm['completion_ms']:.0f} ms")


def _wait_ready(base: str, timeout: float, log_dir: Path) -> bool:
    """Wait until the web server's /readyz says ready, then print each part's latency, or for a
    part that is not ready the sentence saying what is wrong and what to do.

    /readyz tells an anonymous caller only whether each part is ready, so the details come from
    the same checks run here (`clinic.health.run_checks`), with the settings the web server has.
    """
    import httpx

    from clinic.health import run_checks
    from retrieval.index_store import reset_loaded_index

    deadline = time.monotonic() + timeout
    while True:
        try:
            web_ready = httpx.get(f"{base}/readyz", timeout=30).json().get("ready") is True
        except (httpx.HTTPError, ValueError, AttributeError):
            web_ready = False
        if web_ready or time.monotonic() >= deadline:
            break
        time.sleep(2)
    try:
        report = run_checks()
    finally:
        reset_loaded_index()  # the web server holds the index; this process need not
    for name, check in report.checks.items():
        if check["ready"]:
            say("ready", f"{name}: ok ({check['ms']} ms)")
        else:
            say("NOT READY", f"{name}: {check['error']}")
    if not web_ready and report.ready:
        say("NOT READY", f"the web server's /readyz does not say ready though every check passes "
            f"from here; see {log_dir}/web.log")
    return web_ready


if __name__ == "__main__":
    sys.exit(main())
