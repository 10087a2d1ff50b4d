"""Quick answers fenced: generated from the moment they are posted, one generator at a time
(every write checks its claim), a heartbeat that keeps the claim through prefill, cancel
honoured, a cut-off model stream never stored as an answer; and a rate limit that holds when
twenty questions arrive at once.

The model is an OpenAI-compatible HTTP server double (a real socket), verdicts come from the
verification engine double, retrieval runs on the real index over the synthetic articles.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from clinic import quick
from clinic.answering import ModelChoice, Passage, PreparedAnswer
from clinic.models import Consultation
from clinic.services import RateLimited, consultation_create
from modelsvc.client import (
    ClientConfig,
    ModelClient,
    ModelStreamTruncatedError,
    StreamDone,
    TextDelta,
)
from modelsvc.models import ModelCall
from tests.clinic.verifier_double import verifier_double  # noqa: F401  (a fixture)
from tests.modelsvc.doubles import ModelServerDouble, Reply
from tests.web.test_api import _schema_validator

QUESTION = "Does low-dose aspirin prevent recurrent stroke?"
SUPPORTED = "Low-dose aspirin lowers the risk of recurrent stroke [1]."
SECOND = "Low-dose aspirin lowers recurrent stroke by a fifth [1]."


def _words(*sentences: str) -> list[str]:
    return [word + " " for sentence in sentences for word in sentence.split()]


def _wait_until(condition: Callable[[], bool], seconds: float = 60) -> bool:
    """Polls until the condition holds; the bound only keeps a broken build from hanging."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _api(user: User) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")


def _post(api: Client, question: str = QUESTION) -> int:
    response = api.post("/api/v1/consultations", {"question": question},
                        content_type="application/json")
    assert response.status_code == 201, response.content
    return int(response.json()["id"])


def _poll_until_finished(api: Client, consultation_id: int) -> dict[str, Any]:
    body: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal body
        body = api.get(f"/api/v1/consultations/{consultation_id}").json()
        return bool(body["finished"])

    assert _wait_until(finished), body
    return body


@pytest.fixture
def serve_model(settings: Any) -> Iterator[Callable[..., Any]]:
    """Points the app at a model server double; every generator has ended before teardown."""
    started: list[Any] = []

    def serve(server: Any) -> Any:
        server.__enter__()
        started.append(server)
        settings.MODEL_BASE_URL, settings.MODEL_NAME = server.base_url, "recorded-model"
        settings.MODEL_MAX_RETRIES = 0
        return server

    yield serve
    for consultation_id in Consultation.objects.values_list("pk", flat=True):
        assert quick.wait_for_local(consultation_id, 60)
    for server in started:
        server.__exit__()


class CutOffServer:
    """An OpenAI-compatible server whose first `cut` streamed replies stop mid-answer: the
    connection closes with neither a finish reason nor `[DONE]`, as when a server dies."""

    def __init__(self, pieces: list[str], cut: int) -> None:
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests.append(body)
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                cut_off = len(server.requests) <= cut
                for piece in pieces[:len(pieces) // 2] if cut_off else pieces:
                    self._event({"model": "double", "choices": [
                        {"index": 0, "delta": {"content": piece}}]})
                if cut_off:
                    return  # the connection closes here
                self._event({"model": "double", "usage": {
                    "prompt_tokens": 11, "completion_tokens": len(pieces)}, "choices": [
                    {"index": 0, "delta": {}, "finish_reason": "stop"}]})
                self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, payload: dict[str, Any]) -> None:
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> CutOffServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- generated from the POST ------------------------------------------------------------------

@pytest.mark.usefixtures("verifier_double")
def test_an_api_client_that_posts_and_polls_gets_its_answer_without_opening_the_stream(
        clinician: User, tiny_index: Path, serve_model: Any) -> None:
    double = serve_model(ModelServerDouble([Reply(stream=_words(SUPPORTED, SECOND))]))
    api = _api(clinician)

    body = _poll_until_finished(api, _post(api))

    assert body["status"] == "complete", body["error_message"]
    assert body["answer_text"].strip() == f"{SUPPORTED} {SECOND}"
    assert [claim["verdict"] for claim in body["claims"]] == ["supported", "supported"]
    assert body["passages"] and body["passages"][0]["pmid"] == "90000001"
    consultation = Consultation.objects.get(pk=body["id"])
    assert (consultation.claimed_by, consultation.claimed_at) == ("", None)
    assert consultation.attempts == 1
    assert len(double.requests) == 1
    assert consultation.model_calls.get().succeeded


@pytest.mark.usefixtures("verifier_double")
def test_a_page_that_opens_the_stream_mid_answer_gets_what_was_published_then_the_rest(
        client: Client, clinician: User, tiny_index: Path, serve_model: Any) -> None:
    serve_model(ModelServerDouble([Reply(stream=_words(SUPPORTED, SECOND, SUPPORTED),
                                         chunk_delay=0.05)]))
    client.force_login(clinician)
    assert client.post("/", {"question": QUESTION, "quick": "1"}).status_code == 302
    consultation = Consultation.objects.get()
    # The first sentence is out before anyone subscribes.
    assert _wait_until(lambda: Consultation.objects.get().answer_text != "")

    async def follow() -> list[tuple[str, Any]]:
        return [(event["event"], event["data"])
                async for event in quick.consultation_events(consultation.pk)]

    events = async_to_sync(follow)()
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "final"
    assert {"passages", "first_token", "stage"} <= set(kinds)
    # The snapshot comes without the released text; the replayed sentences rebuild it exactly.
    assert events[0][1]["answer_text"] == ""
    released = [data["text"] for kind, data in events if kind == "sentence"]
    assert len(released) == 3  # each sentence once: none lost, none doubled
    assert "by a fifth" in released[1] and released[0] == released[2]
    consultation.refresh_from_db()
    assert consultation.status == "complete"
    assert events[-1][1]["answer_text"] == consultation.answer_text


# --- one generator at a time ------------------------------------------------------------------

def _prepared() -> PreparedAnswer:
    return PreparedAnswer(
        question=QUESTION, patient_note="", model=ModelChoice("recorded-model"), decision=None,
        use_retrieval=True, retrieved=[], passages=[Passage(1, "90000001", "Aspirin", "text")],
        prompted=[], messages=[], max_tokens=16, response_format=None, index_version="v1",
        timings={})


def _go_stale(consultation: Consultation, settings: Any) -> None:
    stale = timezone.now() - timezone.timedelta(seconds=settings.QUICK_ANSWER_LEASE_SECONDS + 1)
    Consultation.objects.filter(pk=consultation.pk).update(claimed_at=stale)


def test_a_taken_over_generators_late_writes_are_all_refused(clinician: User,
                                                              settings: Any) -> None:
    consultation = Consultation.objects.create(user=clinician, question=QUESTION)
    first = quick.claim(consultation.pk)
    assert first is not None
    quick.save_released(consultation.pk, first, f"{SUPPORTED} ")
    _go_stale(consultation, settings)
    second = quick.claim(consultation.pk)
    assert second is not None and second != first
    quick.save_released(consultation.pk, second, "")

    with pytest.raises(quick.ClaimLost):
        quick.heartbeat(consultation.pk, first)
    with pytest.raises(quick.ClaimLost):
        quick.save_released(consultation.pk, first, "A late sentence [1]. ")
    with pytest.raises(quick.ClaimLost):
        quick.store_passages_fenced(consultation.pk, first, _prepared())
    with pytest.raises(quick.ClaimLost):
        quick.complete(consultation.pk, first, "A late answer [1].", None, {}, None, [])  # type: ignore[arg-type]
    assert quick.fail(consultation.pk, first, "late failure") is False
    with pytest.raises(quick.ClaimLost):
        quick.begin_retry(consultation.pk, first, "late retry")

    consultation.refresh_from_db()
    assert (consultation.status, consultation.claimed_by) == ("running", second)
    assert consultation.answer_text == "" and consultation.error_message == ""
    assert consultation.passages.count() == 0 and consultation.claims.count() == 0
    assert consultation.attempts == 2


def test_a_fresh_heartbeat_keeps_the_claim_and_a_stale_one_gives_it_up(
        clinician: User, settings: Any) -> None:
    consultation = Consultation.objects.create(user=clinician, question=QUESTION)
    token = quick.claim(consultation.pk)
    assert token is not None
    quick.heartbeat(consultation.pk, token)
    consultation.refresh_from_db()
    assert not quick.is_orphaned(consultation)
    assert quick.claim(consultation.pk) is None

    _go_stale(consultation, settings)
    consultation.refresh_from_db()
    assert quick.is_orphaned(consultation)
    assert quick.claim(consultation.pk) not in {None, token}


def test_an_answer_whose_generators_keep_dying_is_given_up_with_the_reason(
        clinician: User, settings: Any) -> None:
    settings.QUICK_ANSWER_MAX_ATTEMPTS = 2
    consultation = Consultation.objects.create(user=clinician, question=QUESTION)
    for _ in range(2):
        assert quick.claim(consultation.pk) is not None
        _go_stale(consultation, settings)

    assert quick.claim(consultation.pk) is None
    consultation.refresh_from_db()
    assert consultation.status == "failed"
    assert "given up after 2 attempt(s)" in consultation.error_message
    assert "press Retry" in consultation.error_message
    assert consultation.question == QUESTION


@pytest.mark.usefixtures("verifier_double")
def test_the_heartbeat_runs_while_the_model_reads_the_prompt(
        clinician: User, tiny_index: Path, serve_model: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(quick, "HEARTBEAT_EVERY_SECONDS", 0.1)
    double = serve_model(ModelServerDouble([Reply(stream=_words(SUPPORTED), first_delay=1.5)]))
    api = _api(clinician)
    consultation_id = _post(api)
    consultation = Consultation.objects.get(pk=consultation_id)
    assert _wait_until(lambda: len(double.requests) == 1)  # prefill has begun
    seen = Consultation.objects.get(pk=consultation_id).claimed_at

    def refreshed() -> bool:
        claimed_at = Consultation.objects.get(pk=consultation_id).claimed_at
        return claimed_at is not None and seen is not None and claimed_at > seen

    assert _wait_until(refreshed, 10)
    assert double.chunks_sent == 0  # still reading the prompt: no token yet
    assert quick.claim(consultation_id) is None  # nobody takes it over

    assert _poll_until_finished(api, consultation_id)["status"] == "complete"
    consultation.refresh_from_db()
    assert consultation.attempts == 1


@pytest.mark.usefixtures("verifier_double")
def test_an_answer_whose_web_process_died_is_taken_over_when_polled(
        clinician: User, tiny_index: Path, serve_model: Any, settings: Any) -> None:
    serve_model(ModelServerDouble([Reply(stream=_words(SUPPORTED))]))
    consultation = Consultation.objects.create(
        user=clinician, question=QUESTION, status="running", claimed_by="dead-process",
        attempts=1, answer_text="A sentence released before it died [1]. ")
    _go_stale(consultation, settings)

    body = _poll_until_finished(_api(clinician), consultation.pk)

    assert body["status"] == "complete", body["error_message"]
    assert body["answer_text"].strip() == SUPPORTED
    consultation.refresh_from_db()
    assert consultation.attempts == 2 and consultation.claimed_by == ""


@pytest.mark.usefixtures("verifier_double")
def test_a_generator_that_lost_its_claim_stops_and_writes_nothing(
        clinician: User, tiny_index: Path, serve_model: Any) -> None:
    double = serve_model(ModelServerDouble([Reply(stream=_words(SUPPORTED, SECOND) * 10,
                                                  chunk_delay=0.1)]))
    consultation_id = _post(_api(clinician))
    assert _wait_until(lambda: double.chunks_sent > 2)
    # Another web process took it over (what claim() does there after a stale heartbeat).
    Consultation.objects.filter(pk=consultation_id).update(claimed_by="another-process",
                                                           claimed_at=timezone.now())

    assert quick.wait_for_local(consultation_id, 30)
    assert double.client_hung_up.wait(30)  # the model request was closed
    consultation = Consultation.objects.get(pk=consultation_id)
    assert (consultation.status, consultation.claimed_by) == ("running", "another-process")
    assert consultation.completed_at is None and consultation.claims.count() == 0
    assert not ModelCall.objects.filter(consultation_id=consultation_id, succeeded=True).exists()


# --- cancel -----------------------------------------------------------------------------------

@pytest.mark.usefixtures("verifier_double")
def test_cancel_stops_the_generator_and_its_partial_text_is_never_shown(
        clinician: User, tiny_index: Path, serve_model: Any) -> None:
    double = serve_model(ModelServerDouble([Reply(stream=_words(SUPPORTED, SECOND) * 10,
                                                  chunk_delay=0.1)]))
    api = _api(clinician)
    consultation_id = _post(api)
    assert _wait_until(
        lambda: Consultation.objects.get(pk=consultation_id).answer_text != "")  # released

    response = api.post(f"/api/v1/consultations/{consultation_id}/cancel")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    assert quick.wait_for_local(consultation_id, 30)
    assert double.client_hung_up.wait(30)
    body = api.get(f"/api/v1/consultations/{consultation_id}").json()
    assert body["status"] == "cancelled" and body["answer_text"] == "" and body["claims"] == []
    consultation = Consultation.objects.get(pk=consultation_id)
    assert consultation.question == QUESTION and consultation.claims.count() == 0
    assert consultation.claimed_by == "" and consultation.cancel_requested


def test_only_the_clinician_who_asked_can_cancel_through_the_api(
        clinician: User, other_clinician: User) -> None:
    consultation = Consultation.objects.create(user=clinician, question=QUESTION)
    response = _api(other_clinician).post(f"/api/v1/consultations/{consultation.pk}/cancel")
    assert response.status_code == 404
    consultation.refresh_from_db()
    assert consultation.status == "pending"


def test_the_cancel_action_is_documented_and_answers_as_documented(clinician: User) -> None:
    consultation = Consultation.objects.create(user=clinician, question=QUESTION)
    api = _api(clinician)
    schema = api.get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    path = "/api/v1/consultations/{consultation_id}/cancel"
    for response in (api.post(f"/api/v1/consultations/{consultation.pk}/cancel"),
                     api.post("/api/v1/consultations/999999/cancel")):
        validator = _schema_validator(schema, path, "post", response.status_code)
        assert list(validator.iter_errors(response.json())) == []
    consultation.refresh_from_db()
    assert consultation.status == "cancelled"


def test_the_page_offers_cancel_for_a_quick_answer_being_written(
        client: Client, clinician: User) -> None:
    consultation = Consultation.objects.create(user=clinician, question=QUESTION,
                                               status="running")
    client.force_login(clinician)
    page = client.get(f"/consultations/{consultation.pk}/").content.decode()
    assert 'id="cancel"' in page

    client.post(f"/consultations/{consultation.pk}/cancel")
    consultation.refresh_from_db()
    assert consultation.status == "cancelled"


def test_a_cancelled_quick_answer_says_the_question_is_kept_and_how_to_ask_again(
        client: Client, clinician: User) -> None:
    consultation = Consultation.objects.create(user=clinician, question=QUESTION,
                                               status="running")
    client.force_login(clinician)
    client.post(f"/consultations/{consultation.pk}/cancel")

    display = client.get(f"/consultations/{consultation.pk}/snapshot").json()["display"]
    assert (display["state"], display["label"], display["finished"]) == (
        "cancelled", "Cancelled", True)
    assert "your question is kept" in display["detail"]
    assert "Press Retry to ask it again" in display["detail"]
    page = client.get(f"/consultations/{consultation.pk}/").content.decode()
    assert re.search(r'id="retry-form"\s*>', page)  # the Retry the sentence names is shown
    consultation.refresh_from_db()
    assert consultation.question == QUESTION


# --- a cut-off model stream -------------------------------------------------------------------

def test_the_client_raises_on_a_stream_cut_off_before_its_end_marker(settings: Any) -> None:
    with CutOffServer(_words(SUPPORTED, SECOND), cut=1) as server:
        settings.MODEL_BASE_URL = server.base_url
        client = ModelClient(ClientConfig.from_settings())
        events: list[Any] = []
        with pytest.raises(ModelStreamTruncatedError):
            for event in client.stream_chat([{"role": "user", "content": "q"}], model="m",
                                            max_tokens=64):
                events.append(event)
        assert events and all(isinstance(event, TextDelta) for event in events)
        finished = list(client.stream_chat([{"role": "user", "content": "q"}], model="m",
                                           max_tokens=64))
        assert isinstance(finished[-1], StreamDone)
        assert finished[-1].result.text == " ".join(f"{SUPPORTED} {SECOND}".split()) + " "


@pytest.mark.usefixtures("verifier_double")
def test_a_cut_off_stream_is_discarded_and_written_again(
        clinician: User, tiny_index: Path, serve_model: Any) -> None:
    server = serve_model(CutOffServer(_words(SUPPORTED, SECOND), cut=1))
    api = _api(clinician)

    body = _poll_until_finished(api, _post(api))

    assert body["status"] == "complete", body["error_message"]
    assert body["answer_text"].strip() == f"{SUPPORTED} {SECOND}"
    assert body["error_message"] == ""
    assert len(server.requests) == 2
    consultation = Consultation.objects.get(pk=body["id"])
    assert consultation.attempts == 2
    assert list(consultation.model_calls.order_by("id").values_list("succeeded", flat=True)) \
        == [False, True]


@pytest.mark.usefixtures("verifier_double")
def test_a_stream_cut_off_every_time_fails_with_the_reason_and_is_never_complete(
        clinician: User, tiny_index: Path, serve_model: Any, settings: Any) -> None:
    settings.QUICK_ANSWER_MAX_ATTEMPTS = 2
    server = serve_model(CutOffServer(_words(SUPPORTED, SECOND), cut=99))
    api = _api(clinician)

    body = _poll_until_finished(api, _post(api))

    assert body["status"] == "failed"
    assert "cut off before it finished" in body["error_message"]
    assert "press Retry" in body["error_message"]
    assert body["answer_text"] == "" and body["claims"] == []
    assert len(server.requests) == 2
    consultation = Consultation.objects.get(pk=body["id"])
    assert consultation.claims.count() == 0 and consultation.completed_at is not None
    assert not consultation.model_calls.filter(succeeded=True).exists()


# --- the rate limit under concurrency ---------------------------------------------------------

def test_twenty_concurrent_questions_never_exceed_the_rate_limit(
        transactional_db: None, clinician: User, settings: Any, monkeypatch: Any) -> None:
    settings.RATE_LIMIT_PER_MINUTE = 5
    monkeypatch.setattr(quick, "answer_in_background", lambda consultation_id: False)
    start = threading.Barrier(20)
    outcomes: list[str] = []

    def ask(number: int) -> None:
        try:
            start.wait()
            consultation_create(user=clinician, question=f"Question {number} about aspirin?")
            outcomes.append("stored")
        except RateLimited:
            outcomes.append("limited")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["limited"] * 15 + ["stored"] * 5
    assert Consultation.objects.filter(user=clinician).count() == 5


def test_a_page_served_by_another_process_gets_the_evidence_then_the_sentences(
        transactional_db: None, clinician: User) -> None:
    """The stream of a web process that is not the generator tails the database: the evidence
    list once the generator has stored it, then each released sentence."""
    consultation = Consultation.objects.create(user=clinician, question=QUESTION)
    token = quick.claim(consultation.pk)  # the generator, in "another process": no channel here
    assert token is not None
    quick.store_passages_fenced(consultation.pk, token, _prepared())
    quick.save_released(consultation.pk, token, f"{SUPPORTED} ")

    async def first_events(count: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async for event in quick._tail_database(consultation.pk, 0):
            events.append(event)
            if len(events) == count:
                break
        return events

    events = async_to_sync(first_events)(3)
    assert [event["event"] for event in events] == ["passages", "stage", "sentence"]
    assert [p["pmid"] for p in events[0]["data"]["passages"]] == [
        p.pmid for p in _prepared().passages]
    assert events[1]["data"] == {"stage": "writing"}
    assert events[2]["data"]["text"] == f"{SUPPORTED} "
    connections.close_all()
