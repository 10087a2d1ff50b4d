"""The quick answer end to end: real index, real model server, real ASGI streaming."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client

from clinic.models import Consultation
from tests.web.streams import parse_events, read_stream

pytestmark = pytest.mark.model_server


def _ask(client: Client, user: User, question: str) -> Consultation:
    client.force_login(user)
    response = client.post("/", {"question": question, "quick": "1"})
    assert response.status_code == 302, response.content
    return Consultation.objects.latest("id")


def test_the_answer_is_checked_sentence_by_sentence_and_everything_is_stored(
        client: Client, clinician: User, model_server: dict[str, str], tiny_index: Path) -> None:
    consultation = _ask(client, clinician, "Does low-dose aspirin prevent recurrent stroke?")
    body = read_stream(client.get(f"/consultations/{consultation.pk}/events"))
    events = parse_events(body)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "snapshot"
    assert "passages" in kinds and "first_token" in kinds and kinds[-1] == "final"
    assert kinds.index("first_token") < kinds.index("final")
    # The model's raw tokens never leave the server; progress does.
    assert "token" not in kinds
    stages = [json.loads(data)["stage"] for kind, data in events if kind == "stage"]
    assert "writing" in stages and stages[-1] == "verifying"
    final = json.loads(events[-1][1])

    consultation.refresh_from_db()
    assert consultation.status == "complete", consultation.error_message
    assert consultation.answer_text.strip()  # the whole draft, stored for reviewers
    released = "".join(json.loads(data)["text"] for kind, data in events if kind == "sentence")
    if consultation.abstained:
        # The tiny random model writes nothing its passages support: withheld, draft unsent.
        assert final["answer_text"] == "" and final["claims"] == []
        assert final["withheld"]["message"]
        assert consultation.answer_text not in body
        assert released == ""
    else:
        assert final["answer_text"] == consultation.answer_text
    passages = list(consultation.passages.order_by("rank"))
    assert passages and passages[0].pmid == "90000001"
    assert all(p.stages for p in passages)
    assert consultation.routed_model_name == model_server["model"]
    assert consultation.routing_confidence is not None
    assert consultation.prompt_tokens > 0 and consultation.completion_tokens > 0
    assert consultation.time_to_first_token_ms is not None
    stages_stored = set(consultation.stage_timings)
    assert {"embed_ms", "retrieve_ms", "generate_ms", "verify_ms"} <= stages_stored
    call = consultation.model_calls.get()
    assert call.purpose == "answer" and call.succeeded
    assert call.completion_tokens == consultation.completion_tokens


def test_a_down_model_server_fails_clearly_keeps_the_question_and_retry_works(
        client: Client, clinician: User, model_server: dict[str, str], tiny_index: Path,
        settings: Any) -> None:
    working_url = settings.MODEL_BASE_URL
    settings.MODEL_BASE_URL = "http://127.0.0.1:9/v1"
    settings.MODEL_MAX_RETRIES = 0
    consultation = _ask(client, clinician, "Is metformin safe in CKD stage 3?")
    events = parse_events(read_stream(client.get(f"/consultations/{consultation.pk}/events")))
    final = json.loads(events[-1][1])
    assert final["status"] == "failed"
    assert "press Retry" in final["error_message"]
    consultation.refresh_from_db()
    assert consultation.question == "Is metformin safe in CKD stage 3?"
    assert consultation.model_calls.get().succeeded is False

    settings.MODEL_BASE_URL = working_url
    client.post(f"/consultations/{consultation.pk}/retry")
    events = parse_events(read_stream(client.get(f"/consultations/{consultation.pk}/events")))
    assert json.loads(events[-1][1])["status"] == "complete"


def test_a_dropped_connection_never_loses_the_answer(clinician: User,
                                                     model_server: dict[str, str],
                                                     tiny_index: Path,
                                                     asgi_live_server: str) -> None:
    consultation = Consultation.objects.create(user=clinician, question="Do statins cause "
                                               "muscle pain?")
    client = Client()
    client.force_login(clinician)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    url = f"{asgi_live_server}/consultations/{consultation.pk}/events"
    with httpx.stream("GET", url, cookies=cookies, timeout=60) as response:
        for line in response.iter_lines():
            if line == "event: first_token":
                break  # the browser goes away mid-answer
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        consultation.refresh_from_db()
        if consultation.is_finished:
            break
        time.sleep(0.3)
    assert consultation.status == "complete"
    assert consultation.completion_tokens > 3
    # Coming back replays the stored answer in full.
    with httpx.stream("GET", url, cookies=cookies, timeout=30) as response:
        body = "".join(response.iter_text())
    final = json.loads(parse_events(body)[-1][1])
    assert final["status"] == "complete"
    shown = "" if consultation.abstained else consultation.answer_text
    assert final["answer_text"] == shown
