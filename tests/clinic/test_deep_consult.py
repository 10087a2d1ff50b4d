"""The deep consult job: steps stored as they run, one execution at a time, reruns that continue.

The job runs in-process (`run_deep_consult.apply`) against the tiny real model server and a tiny
real index, except the last test, which runs it on real Celery workers and kills one mid-job.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db.models import Sum
from django.utils import timezone

from clinic import deep
from clinic.models import Consultation, DeepConsultStep
from clinic.selectors import consultation_snapshot
from clinic.services import consultation_cancel, consultation_create, consultation_retry
from clinic.status import consultation_display_status
from clinic.tasks import run_deep_consult
from launcher.processes import free_port, stop_process
from modelsvc.models import ModelCall
from tests.conftest import subprocess_env

QUESTION = "Does low-dose aspirin prevent recurrent stroke, and what is the bleeding risk?"
STEP_KINDS = ["plan", "retrieve", "draft", "verify", "revise", "final"]
# Committed rows, so that real workers (other processes) see them; the personas recreate the
# role groups that the flush after a transactional test drops.
committing_db = pytest.mark.django_db(transaction=True)
# The tiny random model always writes up to the limit; a shorter one keeps the suite fast.
ANSWER_MAX_TOKENS = 64


@pytest.fixture(autouse=True)
def short_answers(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.ANSWER_MAX_TOKENS = ANSWER_MAX_TOKENS
    monkeypatch.setattr(deep, "PLAN_MAX_TOKENS", 48)


class WorkerKilled(BaseException):
    """Stands in for SIGKILL: nothing in the job catches it, so nothing is cleaned up."""


def _deep_consultation(user: User, question: str = QUESTION, **fields: Any) -> Consultation:
    # Created directly, not through consultation_create, so no message is queued in Redis.
    fields.setdefault("token_budget", django_settings.DEEP_CONSULT_TOKEN_BUDGET)
    return Consultation.objects.create(user=user, question=question,
                                       mode=Consultation.Mode.DEEP, **fields)


def _steps(consultation: Consultation) -> dict[str, DeepConsultStep]:
    return {step.kind: step for step in consultation.steps.all()}


def _calls(consultation: Consultation, purpose: str) -> int:
    return ModelCall.objects.filter(consultation_id=consultation.pk, purpose=purpose).count()


def _crash_on_first_call(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Make DeepConsultJob.<target> die like a killed worker, once."""
    original = getattr(deep.DeepConsultJob, target)
    crashed: list[bool] = []

    def crash_once(self: deep.DeepConsultJob, step: DeepConsultStep) -> None:
        if not crashed:
            crashed.append(True)
            raise WorkerKilled
        original(self, step)

    monkeypatch.setattr(deep.DeepConsultJob, target, crash_once)


# --- the plan parser --------------------------------------------------------------------------

def test_it_reads_sub_questions_from_a_json_array_inside_prose() -> None:
    reply = ('Here you go:\n```json\n["Does aspirin prevent recurrent stroke?", '
             '"How often does aspirin cause major bleeding?", 42]\n```')
    assert deep.parse_sub_questions(reply) == ["Does aspirin prevent recurrent stroke?",
                                               "How often does aspirin cause major bleeding?"]


def test_it_reads_numbered_lines_keeps_three_and_drops_duplicates() -> None:
    reply = ("1. Does aspirin prevent stroke?\n2) Does aspirin prevent stroke?\n"
             "- What dose of aspirin is used?\n* Who bleeds on aspirin?\n"
             "Q5: Is clopidogrel better than aspirin?\nSome closing words.")
    assert deep.parse_sub_questions(reply) == ["Does aspirin prevent stroke?",
                                               "What dose of aspirin is used?",
                                               "Who bleeds on aspirin?"]


def test_it_finds_no_sub_questions_in_noise() -> None:
    assert deep.parse_sub_questions("") == []
    assert deep.parse_sub_questions("zq xv ]] [[ {{ ?") == []
    assert deep.parse_sub_questions('["ok?", "' + "very long " * 50 + '?"]') == []


# --- the job, in-process ----------------------------------------------------------------------

@committing_db
@pytest.mark.model_server
def test_it_runs_every_step_and_stores_passages_claims_and_accounting(
        clinician: User, model_server: dict[str, str], tiny_index: Path) -> None:
    consultation = _deep_consultation(clinician)

    run_deep_consult.apply(args=[consultation.pk])

    consultation.refresh_from_db()
    assert consultation.status == "complete", consultation.error_message
    assert consultation.attempts == 1 and consultation.claimed_by == ""
    assert consultation.completed_at and consultation.total_ms is not None
    assert consultation.routed_model_name == model_server["model"]
    steps = _steps(consultation)
    assert [s.kind for s in consultation.steps.order_by("position")] == STEP_KINDS
    assert all(s.started_at and s.finished_at and s.started_at <= s.finished_at
               for s in steps.values() if s.status == "done")
    assert {k: steps[k].status for k in ("plan", "retrieve", "draft", "verify", "final")} == \
        dict.fromkeys(("plan", "retrieve", "draft", "verify", "final"), "done")

    sub_questions = steps["plan"].output["sub_questions"]
    assert 1 <= len(sub_questions) <= 3
    if steps["plan"].output["fallback"]:  # the tiny random model rarely plans anything
        assert sub_questions == [QUESTION]
    passages = list(consultation.passages.order_by("rank"))
    assert len(passages) == steps["retrieve"].output["passages"] > 0
    assert [p.rank for p in passages] == list(range(1, len(passages) + 1))
    assert {p.sub_question for p in passages} <= set(range(len(sub_questions)))
    assert "90000001" in {p.pmid for p in passages}

    assert steps["verify"].output["low_support"] in (True, False)
    revised = steps["revise"].status == "done"
    assert steps["revise"].status == ("done" if steps["verify"].output["low_support"]
                                      else "skipped")
    final_text = steps["revise" if revised else "draft"].output["text"]
    assert consultation.answer_text == final_text
    assert consultation.claims.count() == steps["final"].output["claims"]
    assert consultation.abstained == steps["final"].output["abstained"]

    assert _calls(consultation, "deep_plan") == 1
    assert _calls(consultation, "deep_draft") == 1
    assert _calls(consultation, "deep_revise") == (1 if revised else 0)
    calls = ModelCall.objects.filter(consultation_id=consultation.pk)
    assert all(call.succeeded for call in calls)
    totals = calls.aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    assert consultation.prompt_tokens == totals["prompt"] > 0
    assert consultation.completion_tokens == totals["completion"] > 0
    assert sum(s.tokens for s in steps.values()) == totals["prompt"] + totals["completion"]
    assert totals["prompt"] + totals["completion"] <= consultation.token_budget


@committing_db
@pytest.mark.model_server
def test_a_redelivered_job_continues_after_the_last_done_step(
        clinician: User, model_server: dict[str, str], tiny_index: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    consultation = _deep_consultation(clinician)
    _crash_on_first_call(monkeypatch, "_verify")
    job_id = str(uuid.uuid4())
    with pytest.raises(WorkerKilled):
        run_deep_consult.apply(args=[consultation.pk], task_id=job_id, throw=True)
    before = _steps(consultation)
    assert before["draft"].status == "done" and before["verify"].status == "running"
    passages = consultation.passages.count()

    # The same message again, as Redis hands it to another worker: the claim is "ours".
    run_deep_consult.apply(args=[consultation.pk], task_id=job_id)

    consultation.refresh_from_db()
    assert consultation.status == "complete", consultation.error_message
    assert consultation.attempts == 2
    after = _steps(consultation)
    for kind in ("plan", "retrieve", "draft"):
        assert after[kind].started_at == before[kind].started_at, kind
        assert after[kind].output == before[kind].output, kind
    assert after["verify"].status == "done"
    assert consultation.steps.count() == 6
    assert consultation.passages.count() == passages
    assert _calls(consultation, "deep_plan") == 1 and _calls(consultation, "deep_draft") == 1


@committing_db
def test_a_live_claim_of_another_job_is_left_alone_and_a_stale_one_is_taken_over(
        clinician: User, monkeypatch: pytest.MonkeyPatch) -> None:
    now = timezone.now()
    consultation = _deep_consultation(clinician, status="running", attempts=1,
                                      claimed_by="other-job w9@host:99", claimed_at=now)
    _crash_on_first_call(monkeypatch, "_plan")  # stop right after the claim, to look at it

    outcome = run_deep_consult.apply(args=[consultation.pk], throw=True).get()

    assert outcome == "dropped: claimed by other-job w9@host:99"
    consultation.refresh_from_db()
    assert consultation.status == "running" and consultation.attempts == 1
    assert consultation.claimed_by == "other-job w9@host:99"
    assert not consultation.steps.exists()

    stale = now - deep.claim_ttl() - timedelta(seconds=1)
    Consultation.objects.filter(pk=consultation.pk).update(claimed_at=stale)
    job_id = str(uuid.uuid4())
    with pytest.raises(WorkerKilled):
        run_deep_consult.apply(args=[consultation.pk], task_id=job_id, throw=True)

    consultation.refresh_from_db()
    assert consultation.status == "running" and consultation.attempts == 2
    assert consultation.claimed_by.startswith(f"{job_id} ")
    assert consultation.claimed_at > stale
    assert _steps(consultation)["plan"].status == "running"


@committing_db
def test_finished_deleted_and_quick_consultations_are_dropped(clinician: User) -> None:
    complete = _deep_consultation(clinician, status="complete", answer_text="Done [1].")
    quick = Consultation.objects.create(user=clinician, question=QUESTION)

    assert run_deep_consult.apply(args=[complete.pk]).get() == "dropped: already complete"
    assert run_deep_consult.apply(args=[quick.pk]).get() == "dropped: not a deep consult"
    assert run_deep_consult.apply(args=[987654]).get() == \
        "dropped: the consultation was deleted"
    complete.refresh_from_db()
    assert complete.attempts == 0 and complete.answer_text == "Done [1]."
    assert not ModelCall.objects.exists()


@committing_db
@pytest.mark.model_server
def test_a_consultation_deleted_while_its_job_runs_ends_the_job_quietly(
        clinician: User, model_server: dict[str, str], tiny_index: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    consultation = _deep_consultation(clinician)
    parse = deep.parse_sub_questions

    def delete_then_parse(text: str) -> list[str]:
        Consultation.objects.filter(pk=consultation.pk).delete()
        return parse(text)

    monkeypatch.setattr(deep, "parse_sub_questions", delete_then_parse)

    outcome = run_deep_consult.apply(args=[consultation.pk], throw=True).get()

    assert outcome == "dropped: claim lost"
    assert not Consultation.objects.filter(pk=consultation.pk).exists()
    assert not DeepConsultStep.objects.exists()


@committing_db
@pytest.mark.model_server
def test_a_cancel_stops_the_job_before_the_next_step(
        clinician: User, model_server: dict[str, str], tiny_index: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    consultation = _deep_consultation(clinician)
    parse = deep.parse_sub_questions

    def cancel_then_parse(text: str) -> list[str]:
        consultation_cancel(consultation=Consultation.objects.get(pk=consultation.pk))
        return parse(text)

    monkeypatch.setattr(deep, "parse_sub_questions", cancel_then_parse)

    outcome = run_deep_consult.apply(args=[consultation.pk]).get()

    # Cancelled at once by the service; the job finds its claim gone and writes nothing more.
    assert outcome == "dropped: claim lost"
    consultation.refresh_from_db()
    assert consultation.status == "cancelled"
    assert consultation.completed_at and consultation.claimed_by == ""
    steps = _steps(consultation)
    assert steps["plan"].status == "skipped" and steps["plan"].output["cancelled"]
    assert all(steps[k].status == "skipped" and steps[k].output["not_reached"]
               for k in STEP_KINDS[1:])
    assert not consultation.passages.exists() and not consultation.claims.exists()
    assert _calls(consultation, "deep_plan") == 1 and _calls(consultation, "deep_draft") == 0


@committing_db
@pytest.mark.model_server
def test_it_stops_with_a_clear_message_before_exceeding_the_token_budget(
        clinician: User, model_server: dict[str, str], tiny_index: Path) -> None:
    # Enough for the plan (a short prompt and 48 tokens), not for a draft with its passages.
    consultation = _deep_consultation(clinician, token_budget=400)

    run_deep_consult.apply(args=[consultation.pk])

    consultation.refresh_from_db()
    assert consultation.status == "failed"
    assert "budget of 400" in consultation.error_message
    steps = _steps(consultation)
    assert steps["plan"].status == "done" and steps["retrieve"].status == "done"
    assert steps["draft"].status == "failed"
    assert "budget of 400" in steps["draft"].output["error"]
    assert {steps[k].status for k in ("verify", "revise", "final")} == {"skipped"}
    assert _calls(consultation, "deep_draft") == 0
    assert consultation.prompt_tokens + consultation.completion_tokens <= 400
    assert consultation.claimed_by == ""


@committing_db
@pytest.mark.model_server
def test_a_transient_model_failure_is_retried_then_failed_after_max_attempts(
        clinician: User, model_server: dict[str, str], tiny_index: Path, settings: Any) -> None:
    settings.MODEL_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens: ModelUnavailableError
    settings.MODEL_MAX_RETRIES = 0
    consultation = _deep_consultation(clinician)

    run_deep_consult.apply(args=[consultation.pk])  # eager: retries run at once

    consultation.refresh_from_db()
    attempts = django_settings.DEEP_CONSULT_MAX_ATTEMPTS
    assert consultation.status == "failed"
    assert consultation.attempts == attempts
    assert "cannot be reached" in consultation.error_message
    assert "press Retry" in consultation.error_message
    calls = ModelCall.objects.filter(consultation_id=consultation.pk, purpose="deep_plan")
    assert calls.count() == attempts and not calls.filter(succeeded=True).exists()
    assert _steps(consultation)["plan"].status == "failed"


@committing_db
@pytest.mark.model_server
def test_a_permanent_model_failure_fails_at_once(
        clinician: User, model_server: dict[str, str], tiny_index: Path, settings: Any) -> None:
    settings.MODEL_CONTEXT_TOKENS = 150  # the draft's instructions alone do not fit
    consultation = _deep_consultation(clinician)

    run_deep_consult.apply(args=[consultation.pk])

    consultation.refresh_from_db()
    assert consultation.status == "failed" and consultation.attempts == 1
    assert "too long for the model" in consultation.error_message
    # Passages are fitted to the draft's prompt when they are chosen, so that step finds it.
    steps = _steps(consultation)
    assert steps["retrieve"].status == "failed" and steps["draft"].status == "skipped"
    assert not consultation.passages.exists() and _calls(consultation, "deep_draft") == 0


@committing_db
@pytest.mark.model_server
def test_a_job_that_keeps_crashing_is_failed_with_the_reason_after_max_attempts(
        clinician: User, model_server: dict[str, str], tiny_index: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    consultation = _deep_consultation(clinician)

    def killed(self: deep.DeepConsultJob, step: DeepConsultStep) -> None:
        raise WorkerKilled

    monkeypatch.setattr(deep.DeepConsultJob, "_draft", killed)
    job_id = str(uuid.uuid4())
    attempts = django_settings.DEEP_CONSULT_MAX_ATTEMPTS
    for _ in range(attempts):
        with pytest.raises(WorkerKilled):
            run_deep_consult.apply(args=[consultation.pk], task_id=job_id, throw=True)

    outcome = run_deep_consult.apply(args=[consultation.pk], task_id=job_id).get()

    assert outcome == "failed"
    consultation.refresh_from_db()
    assert consultation.status == "failed" and consultation.attempts == attempts
    assert f"after {attempts} attempts" in consultation.error_message
    assert "Draft answer" in consultation.error_message
    steps = _steps(consultation)
    assert steps["plan"].status == "done" and steps["draft"].status == "failed"
    assert _calls(consultation, "deep_plan") == 1
    assert consultation.claimed_by == ""


# --- real workers -----------------------------------------------------------------------------

class _StallingModelProxy:
    """Passes the first chat request to the model server and holds every later one."""

    def __init__(self, upstream: str) -> None:
        self.release = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            forwarded = 0

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if Handler.forwarded >= 1:
                    proxy.release.wait(120)
                    self.send_error(503)
                    return
                Handler.forwarded += 1
                upstream_response = httpx.post(upstream + self.path.removeprefix("/v1"),
                                               content=body, timeout=60,
                                               headers={"Content-Type": "application/json"})
                self.send_response(upstream_response.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(upstream_response.content)))
                self.end_headers()
                self.wfile.write(upstream_response.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def prefork_workers(redis_server: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start `celery worker --pool prefork --concurrency 1` processes; all stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, **extra_env: str) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"worker-{name}.log"
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("celery")), "-A", "config", "worker",
             "--pool", "prefork", "--concurrency", "1", "-Q", "celery", "--loglevel", "INFO",
             "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=django_settings.BASE_DIR, env=subprocess_env(**extra_env),
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        process.log_path = log_path  # type: ignore[attr-defined]
        started.append(process)
        _wait_for(lambda: b"ready." in log_path.read_bytes(), 60, f"worker {name} ready",
                  process)
        return process

    yield start
    for process in started:
        stop_process(process)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str,
              process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.2)
    log = process.log_path.read_text()[-3000:] if process is not None else ""  # type: ignore
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def _clear_queue() -> None:
    """Drop messages (and unacknowledged ones) left in this Redis database by earlier runs."""
    from config.celery import app

    app.control.purge()
    with app.connection_for_write() as connection:
        connection.default_channel.client.delete("unacked", "unacked_index")


@pytest.mark.model_server
@pytest.mark.redis
@committing_db
def test_a_worker_killed_mid_job_loses_nothing_and_another_finishes_it_once(
        clinician: User, model_server: dict[str, str], tiny_index: Path,
        prefork_workers: Callable[..., subprocess.Popen[bytes]]) -> None:
    from django.db import connection

    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip("worker processes cannot see an in-memory SQLite test database; "
                    "config/settings_test.py makes it a file")
    _clear_queue()
    visibility_timeout = 10  # the smallest the settings allow: redelivery comes quickly
    proxy = _StallingModelProxy(model_server["base_url"])
    try:
        worker_env = {"CELERY_VISIBILITY_TIMEOUT": str(visibility_timeout),
                      "ANSWER_MAX_TOKENS": str(ANSWER_MAX_TOKENS)}
        first = prefork_workers("first", MODEL_BASE_URL=proxy.url, **worker_env)
        consultation = consultation_create(user=clinician, question=QUESTION, mode="deep")

        def drafting() -> bool:
            steps = _steps(consultation)
            return steps.get("draft") is not None and steps["draft"].status == "running"

        _wait_for(drafting, 90, "the first worker to start drafting", first)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = timezone.now()
        consultation.refresh_from_db()
        assert consultation.status == "running" and consultation.attempts == 1
        before = _steps(consultation)
        assert before["plan"].status == before["retrieve"].status == "done"

        # Redis hands the unacknowledged message out again once it is older than the
        # visibility timeout; a starting worker sweeps for such messages once, at start.
        delivered_before = before["plan"].started_at
        wait = (delivered_before + timedelta(seconds=visibility_timeout + 1)
                - timezone.now()).total_seconds()
        time.sleep(max(wait, 0))
        second = prefork_workers("second", **worker_env)

        def finished() -> bool:
            consultation.refresh_from_db()
            return consultation.is_finished

        _wait_for(finished, 90, "the second worker to finish the job", second)
    finally:
        proxy.close()

    assert consultation.status == "complete", consultation.error_message
    assert consultation.attempts == 2 and consultation.claimed_by == ""
    after = _steps(consultation)
    assert consultation.steps.count() == 6
    assert {s.status for s in after.values()} <= {"done", "skipped"}
    for kind in ("plan", "retrieve"):
        assert after[kind].started_at == before[kind].started_at < killed_at, kind
    assert after["draft"].finished_at > killed_at
    assert consultation.passages.count() == after["retrieve"].output["passages"]
    assert consultation.claims.count() == after["final"].output["claims"]
    assert _calls(consultation, "deep_plan") == 1
    assert ModelCall.objects.filter(consultation_id=consultation.pk, purpose="deep_draft",
                                    succeeded=True).count() == 1


# --- retry and cancel that always work --------------------------------------------------------

@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Retry's enqueue, captured: the test runs the job in-process instead of through Redis."""
    from clinic import services

    ids: list[int] = []
    monkeypatch.setattr(services, "deep_consult_enqueue",
                        lambda consultation: ids.append(consultation.pk))
    return ids


@committing_db
@pytest.mark.model_server
def test_a_retried_failed_consult_resumes_from_its_first_unfinished_step_and_completes(
        clinician: User, model_server: dict[str, str], tiny_index: Path,
        queued: list[int]) -> None:
    consultation = _deep_consultation(clinician, token_budget=400)  # fails at the draft
    run_deep_consult.apply(args=[consultation.pk])
    consultation.refresh_from_db()
    assert consultation.status == "failed"
    before = _steps(consultation)

    Consultation.objects.filter(pk=consultation.pk).update(token_budget=6000)
    consultation_retry(consultation=consultation)

    assert queued == [consultation.pk]
    consultation.refresh_from_db()
    assert consultation.status == "pending" and consultation.completed_at is None
    waiting = _steps(consultation)
    assert waiting["plan"].status == waiting["retrieve"].status == "done"
    assert {waiting[k].status for k in ("draft", "verify", "revise", "final")} == {"pending"}
    assert consultation_display_status(consultation, list(consultation.steps.all())) \
        .steps_done == 2

    assert run_deep_consult.apply(args=[consultation.pk]).get() == "complete"

    consultation.refresh_from_db()
    assert consultation.status == "complete", consultation.error_message
    after = _steps(consultation)
    for kind in ("plan", "retrieve"):
        assert after[kind].started_at == before[kind].started_at, kind
    assert after["draft"].status == after["verify"].status == after["final"].status == "done"
    assert not any(step.output.get("not_reached") for step in after.values())
    assert _calls(consultation, "deep_plan") == 1 and _calls(consultation, "deep_draft") == 1
    display = consultation_display_status(consultation, list(consultation.steps.all()))
    assert display.state in {"answered", "abstained"}
    assert display.steps_done == display.steps_total


@committing_db
@pytest.mark.model_server
def test_a_cancelled_consult_can_be_retried_to_completion(
        clinician: User, model_server: dict[str, str], tiny_index: Path, queued: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    consultation = _deep_consultation(clinician)
    parse = deep.parse_sub_questions
    cancelled: list[bool] = []

    def cancel_once_then_parse(text: str) -> list[str]:
        if not cancelled:
            cancelled.append(True)
            consultation_cancel(consultation=Consultation.objects.get(pk=consultation.pk))
        return parse(text)

    monkeypatch.setattr(deep, "parse_sub_questions", cancel_once_then_parse)
    run_deep_consult.apply(args=[consultation.pk])
    consultation.refresh_from_db()
    assert consultation.status == "cancelled"
    display = consultation_display_status(consultation, list(consultation.steps.all()))
    assert display.state == "cancelled" and display.steps_done == 0
    assert "Retry" in display.detail

    consultation_retry(consultation=consultation)
    assert run_deep_consult.apply(args=[consultation.pk]).get() == "complete"

    consultation.refresh_from_db()
    assert consultation.status == "complete" and not consultation.cancel_requested
    assert {s.status for s in _steps(consultation).values()} <= {"done", "skipped"}
    assert _calls(consultation, "deep_plan") == 2  # the cancelled plan ran again


@committing_db
def test_cancelling_a_consult_whose_worker_died_ends_it_at_once(clinician: User) -> None:
    consultation = _deep_consultation(clinician, status="running", attempts=1,
                                      claimed_by="dead-job w1@host:1",
                                      claimed_at=timezone.now())
    DeepConsultStep.objects.create(consultation=consultation, position=0, kind="plan",
                                   title="Plan sub-questions", status="running",
                                   started_at=timezone.now())

    consultation_cancel(consultation=consultation)

    consultation.refresh_from_db()
    assert consultation.status == "cancelled" and consultation.claimed_by == ""
    assert consultation.steps.get().status == "skipped"
    # A late redelivery of the dead worker's message finds nothing to do.
    assert run_deep_consult.apply(args=[consultation.pk]).get() == "dropped: already cancelled"


class _SlowDraftServer:
    """A model server double: the plan at once, then a draft that trickles for a minute."""

    def __enter__(self) -> Any:
        from tests.modelsvc.doubles import ModelServerDouble, Reply

        plan = Reply(stream=['["Does aspirin prevent recurrent stroke?"]'])
        draft = Reply(stream=[f"Aspirin helps{i} [1]. " for i in range(300)], chunk_delay=0.2)
        self.double = ModelServerDouble([plan, draft])
        return self.double.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.double.__exit__(*exc)


@committing_db
def test_a_cancel_during_a_streamed_step_stops_the_job_and_the_model_within_seconds(
        clinician: User, tiny_index: Path, settings: Any) -> None:
    with _SlowDraftServer() as double:
        settings.MODEL_BASE_URL = double.base_url
        consultation = _deep_consultation(clinician)
        outcome: list[str] = []
        job = threading.Thread(target=lambda: outcome.append(
            run_deep_consult.apply(args=[consultation.pk]).get()))
        job.start()

        def drafting_with_progress() -> bool:
            draft = _steps(consultation).get("draft")
            return draft is not None and draft.output.get("tokens_so_far", 0) > 0

        _wait_for(drafting_with_progress, 120, "the draft to stream")
        running = consultation_display_status(
            Consultation.objects.get(pk=consultation.pk), list(consultation.steps.all()))
        assert running.state == "generating" and "tokens written" in running.detail
        cancelled_at = time.monotonic()
        consultation_cancel(consultation=Consultation.objects.get(pk=consultation.pk))
        job.join(10)

        assert not job.is_alive() and time.monotonic() - cancelled_at < 5
        assert double.client_hung_up.wait(5)  # the model server stopped generating
    assert outcome == ["dropped: claim lost"]
    consultation.refresh_from_db()
    assert consultation.status == "cancelled"
    steps = _steps(consultation)
    assert steps["draft"].status == "skipped" and steps["draft"].output["cancelled"]
    display = consultation_display_status(consultation, list(consultation.steps.all()))
    assert display.steps_done == 2 and display.steps_total == 6 and display.finished


@committing_db
def test_a_draft_that_repeats_itself_is_stopped_and_the_consult_says_so(
        clinician: User, tiny_index: Path, settings: Any) -> None:
    from tests.modelsvc.doubles import ModelServerDouble, Reply

    loop = [f"{n}. {n}. " for n in range(1, 200)]
    with ModelServerDouble([Reply(stream=['["Does aspirin prevent recurrent stroke?"]']),
                            Reply(stream=loop, usage=None)]) as double:
        settings.MODEL_BASE_URL = double.base_url
        consultation = _deep_consultation(clinician)
        run_deep_consult.apply(args=[consultation.pk])

    consultation.refresh_from_db()
    assert consultation.status == "complete" and consultation.abstained
    assert _steps(consultation)["draft"].output["finish_reason"] == "repetition"
    draft_call = ModelCall.objects.get(consultation_id=consultation.pk, purpose="deep_draft")
    assert draft_call.finish_reason == "repetition" and draft_call.prompt_tokens > 0
    snapshot = consultation_snapshot(consultation.pk)
    assert snapshot["display"]["state"] == "abstained"
    assert snapshot["display"]["stopped_by"] == "repetition"
    assert "repeating itself" in snapshot["display"]["detail"]
