"""The quick answer: the answering pipeline (clinic.answering), streamed as server-sent events.

Generation runs as a task of its own, detached from the browser's connection: a dropped
connection or a reload never loses the answer, the task finishes and stores it, and the page
that comes back subscribes again (or tails the database when another process generates).

Nothing unverified reaches the clinician: the model's tokens stay on the server. Each complete
sentence is checked on its own against the passages it cites (`check_sentence`, one sentence at
a time, in order, while the model goes on writing) and released as a `sentence` event only when
supported. A sentence not found in its passages is held back and comes with the final snapshot,
marked; one that a passage contradicts (or that repeats a passage's instructions) stops all
release, because the answer will be withheld. `stage` events say how far writing and checking
have got. While it runs, the row's answer_text holds the released sentences only; the whole
draft is stored once verified (`finalize_answer`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from clinic.answering import (
    Passage,
    PreparedAnswer,
    SentenceCheck,
    check_sentence,
    finalize_answer,
    prepare_answer,
    stored_passages,
    stream_answer,
)
from clinic.models import Consultation
from clinic.selectors import consultation_snapshot
from modelsvc.accounting import MeteredResult
from modelsvc.citations import ParsedClaim, parse_answer
from modelsvc.client import TextDelta
from modelsvc.errors import ModelServiceError
from retrieval.search import RetrievalError

logger = logging.getLogger(__name__)


def sse_frame(event: dict[str, Any]) -> str:
    """One server-sent event on the wire, as the page and the API both send it."""
    return f"event: {event['event']}\ndata: {json.dumps(event['data'])}\n\n"

# A running answer whose row has not moved for this long is taken to be orphaned (its process
# died) and is generated again.
STALE_AFTER = timedelta(seconds=45)
TOUCH_EVERY_SECONDS = 0.5

_tasks: dict[int, asyncio.Task[None]] = {}
_texts: dict[int, str] = {}
_subscribers: dict[int, list[asyncio.Queue[dict[str, Any] | None]]] = {}


def _publish(consultation_id: int, event: dict[str, Any] | None) -> None:
    for queue in _subscribers.get(consultation_id, []):
        queue.put_nowait(event)


def _claim(consultation_id: int) -> bool:
    """Take the consultation for generation with a conditional update; True if it was ours."""
    stale = timezone.now() - STALE_AFTER
    updated = Consultation.objects.filter(
        Q(status=Consultation.Status.PENDING)
        | Q(status=Consultation.Status.RUNNING, updated_at__lt=stale),
        pk=consultation_id, mode=Consultation.Mode.QUICK,
    ).update(status=Consultation.Status.RUNNING, started_at=timezone.now(),
             updated_at=timezone.now(), attempts=1, answer_text="")
    return updated == 1


def _fail(consultation_id: int, message: str) -> None:
    Consultation.objects.filter(pk=consultation_id).update(
        status=Consultation.Status.FAILED, error_message=message, updated_at=timezone.now())


def _prepare(consultation_id: int) -> PreparedAnswer:
    """Route, retrieve, fit and store the passages shown; returns what generation needs."""
    consultation = Consultation.objects.get(pk=consultation_id)
    return prepare_answer(consultation.question, patient_note=consultation.patient_note,
                          consultation=consultation,
                          include_retracted=consultation.include_retracted)


def _touch(consultation_id: int) -> None:
    """Keeps the row fresh while the model writes, so no other process takes it for orphaned."""
    Consultation.objects.filter(pk=consultation_id, status=Consultation.Status.RUNNING).update(
        updated_at=timezone.now())


def _save_partial(consultation_id: int, text: str) -> None:
    Consultation.objects.filter(pk=consultation_id, status=Consultation.Status.RUNNING).update(
        answer_text=text, updated_at=timezone.now())


def _complete(consultation_id: int, text: str, metered: MeteredResult,
              timings: dict[str, float]) -> None:
    consultation = Consultation.objects.get(pk=consultation_id)
    result = metered.result
    started = time.monotonic()
    with transaction.atomic():
        consultation.prompt_tokens = result.prompt_tokens
        consultation.completion_tokens = result.completion_tokens
        consultation.cost = metered.call.cost
        consultation.time_to_first_token_ms = result.time_to_first_token_ms
        consultation.stage_timings = {**consultation.stage_timings, **timings}
        consultation.save(update_fields=["prompt_tokens", "completion_tokens", "cost",
                                         "time_to_first_token_ms", "stage_timings", "updated_at"])
        finalize_answer(consultation, text, stored_passages(consultation_id))
    verify_ms = (time.monotonic() - started) * 1000
    total_ms = int((timezone.now() - consultation.started_at).total_seconds() * 1000) \
        if consultation.started_at else None
    Consultation.objects.filter(pk=consultation_id).update(
        total_ms=total_ms,
        stage_timings={**consultation.stage_timings, "verify_ms": round(verify_ms, 1)})


# Where a sentence has certainly ended: a sentence end or a line break, then text that is not a
# citation (a citation after the full stop still belongs to the sentence before it).
_SENTENCE_END = re.compile(r"[.!?](?:\s*\[[^\]\n]*\])*(?=[ \t]+[^\s\[])|\n+(?=[^\s\[])")


def complete_sentences(text: str, n_passages: int) -> list[ParsedClaim]:
    """The claims of `text` whose sentences are finished, parsed as the whole answer will be."""
    ends = list(_SENTENCE_END.finditer(text))
    if not ends:
        return []
    return parse_answer(text[:ends[-1].end()], n_passages).claims


def released_text(claim: ParsedClaim) -> str:
    cites = "".join(f"[{n}]" for n in claim.citations)
    return f"{claim.text} {cites} " if cites else f"{claim.text} "


class SentenceGate:
    """Checks complete sentences in order, one at a time, and releases the supported ones."""

    def __init__(self, consultation_id: int, passages: list[Passage]) -> None:
        self.consultation_id = consultation_id
        self.passages = passages
        self.n_passages = max((p.number for p in passages), default=0)
        self.queue: asyncio.Queue[ParsedClaim | None] = asyncio.Queue()
        self.written = 0
        self.checked = 0
        self.released = 0
        self.held = 0
        self.stopped = False
        self.text = ""
        self.first_release_at: float | None = None
        self.worker = asyncio.get_running_loop().create_task(self._check_in_order())

    def feed(self, draft: str, *, finished: bool = False) -> None:
        """The draft so far; queues each sentence that has become complete."""
        claims = (parse_answer(draft, self.n_passages).claims if finished
                  else complete_sentences(draft, self.n_passages))
        for claim in claims[self.written:]:
            self.queue.put_nowait(claim)
        if len(claims) > self.written:
            self.written = len(claims)
            self._stage("checking" if self.checked < self.written else "writing")
        if finished:
            self.queue.put_nowait(None)

    async def close(self) -> None:
        await self.worker

    def cancel(self) -> None:
        self.worker.cancel()

    def _stage(self, stage: str) -> None:
        _publish(self.consultation_id, {"event": "stage", "data": {
            "stage": stage, "written": self.written, "checked": self.checked,
            "released": self.released, "held": self.held, "withholding": self.stopped}})

    async def _check_in_order(self) -> None:
        while (claim := await self.queue.get()) is not None:
            if self.stopped:
                self.checked += 1
                continue
            check: SentenceCheck = await sync_to_async(check_sentence, thread_sensitive=False)(
                claim, self.passages)
            self.checked += 1
            if check.withholds:
                self.stopped = True
            elif check.releasable:
                await self._release(check)
            else:
                self.held += 1
            self._stage("checking" if self.checked < self.written else "writing")

    async def _release(self, check: SentenceCheck) -> None:
        piece = released_text(check.claim)
        self.text += piece
        self.released += 1
        if self.first_release_at is None:
            self.first_release_at = time.monotonic()
        _texts[self.consultation_id] = self.text
        _publish(self.consultation_id, {"event": "sentence", "data": {
            "text": piece, "citations": list(check.claim.citations),
            "verdict": check.support.verdict, "passage": check.support.passage}})
        await sync_to_async(_save_partial)(self.consultation_id, self.text)


async def _generate(consultation_id: int) -> None:
    gate: SentenceGate | None = None
    try:
        _publish(consultation_id, {"event": "stage", "data": {"stage": "retrieving"}})
        prepared = await sync_to_async(_prepare, thread_sensitive=False)(consultation_id)
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        _publish(consultation_id, {"event": "passages", "data": snapshot})
        _publish(consultation_id, {"event": "stage", "data": {"stage": "writing"}})

        draft = ""
        generate_started = last_touch = time.monotonic()
        gate = SentenceGate(consultation_id, list(prepared.passages))
        metered: MeteredResult | None = None
        async for event in stream_answer(prepared, purpose="answer",
                                         consultation_id=consultation_id):
            if isinstance(event, TextDelta):
                if not draft:
                    _publish(consultation_id, {"event": "first_token", "data": {
                        "ms": round((time.monotonic() - generate_started) * 1000)}})
                draft += event.text
                gate.feed(draft)
                if time.monotonic() - last_touch > TOUCH_EVERY_SECONDS:
                    await sync_to_async(_touch)(consultation_id)
                    last_touch = time.monotonic()
            else:
                metered = event
        if metered is None:
            raise RuntimeError("the model stream ended without its final result")
        generate_ms = (time.monotonic() - generate_started) * 1000
        gate.feed(draft, finished=True)
        await gate.close()
        _publish(consultation_id, {"event": "stage", "data": {"stage": "verifying"}})
        timings = {"generate_ms": round(generate_ms, 1)}
        if gate.first_release_at is not None:
            timings["first_sentence_ms"] = round(
                (gate.first_release_at - generate_started) * 1000, 1)
        await sync_to_async(_complete, thread_sensitive=False)(
            consultation_id, draft, metered, timings)
    except ModelServiceError as error:
        logger.warning("answer %s failed at the model server: %s", consultation_id, error.message)
        await sync_to_async(_fail)(consultation_id, error.message + " Your question is saved; "
                                   "press Retry.")
    except RetrievalError as error:
        logger.warning("answer %s failed at retrieval: %s", consultation_id, error)
        await sync_to_async(_fail)(consultation_id, f"{error} Your question is saved; press Retry.")
    except Exception:
        logger.exception("answer %s failed unexpectedly", consultation_id)
        await sync_to_async(_fail)(consultation_id, "Something went wrong while answering; the "
                                   "error is logged. Your question is saved; press Retry.")
    finally:
        if gate is not None and not gate.worker.done():
            gate.cancel()
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        _publish(consultation_id, {"event": "final", "data": snapshot})
        _publish(consultation_id, None)
        _tasks.pop(consultation_id, None)
        _texts.pop(consultation_id, None)


async def consultation_events(consultation_id: int) -> AsyncIterator[dict[str, Any]]:
    """Events for one page: a snapshot first, then released sentences until the final one."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    _subscribers.setdefault(consultation_id, []).append(queue)
    try:
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        if consultation_id in _texts:
            # No await between these lines: the text and the queue agree exactly.
            snapshot["answer_text"] = _texts[consultation_id]
            _drop_queued_sentences(queue)
        yield {"event": "snapshot", "data": snapshot}
        if snapshot["finished"]:
            yield {"event": "final", "data": snapshot}
            return
        if consultation_id not in _tasks and await sync_to_async(_claim)(consultation_id):
            _start_task(consultation_id)
        if consultation_id not in _tasks:
            restarted = False
            async for event in _tail_database(consultation_id, len(snapshot["answer_text"])):
                yield event
                restarted = event["event"] == "restarted"
            if not restarted:
                return
        while (queued := await queue.get()) is not None:
            yield queued
    finally:
        _subscribers[consultation_id].remove(queue)
        if not _subscribers[consultation_id]:
            del _subscribers[consultation_id]


def _drop_queued_sentences(queue: asyncio.Queue[dict[str, Any] | None]) -> None:
    kept = []
    while not queue.empty():
        event = queue.get_nowait()
        if event is None or event["event"] != "sentence":
            kept.append(event)
    for event in kept:
        queue.put_nowait(event)


def _start_task(consultation_id: int) -> None:
    _texts[consultation_id] = ""
    _tasks[consultation_id] = asyncio.get_running_loop().create_task(_generate(consultation_id))


async def _tail_database(consultation_id: int, sent: int) -> AsyncIterator[dict[str, Any]]:
    """Another process is generating: relay what it saves until it finishes or goes stale."""
    while True:
        await asyncio.sleep(0.4)
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        text = snapshot["answer_text"]
        if len(text) > sent and not snapshot["finished"]:
            # The other process saves released sentences only (see SentenceGate).
            yield {"event": "sentence", "data": {"text": text[sent:], "citations": [],
                                                 "verdict": "supported", "passage": None}}
            sent = len(text)
        if snapshot["finished"]:
            yield {"event": "final", "data": snapshot}
            return
        if await sync_to_async(_claim)(consultation_id):
            _start_task(consultation_id)
            yield {"event": "restarted", "data": {}}
            return


