"""The quick answer: the answering pipeline (clinic.answering), streamed as server-sent events.

Generation runs as a task of its own, detached from the browser's connection: a dropped
connection or a reload never loses the answer, the task finishes and stores it, and the page
that comes back subscribes again (or tails the database when another process generates).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from clinic.answering import (
    PreparedAnswer,
    finalize_answer,
    prepare_answer,
    stored_passages,
    stream_answer,
)
from clinic.models import Consultation
from clinic.selectors import consultation_snapshot
from modelsvc.accounting import MeteredResult
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
SAVE_EVERY_SECONDS = 0.5

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
                          consultation=consultation)


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


async def _generate(consultation_id: int) -> None:
    try:
        _publish(consultation_id, {"event": "stage", "data": {"stage": "retrieving"}})
        prepared = await sync_to_async(_prepare, thread_sensitive=False)(consultation_id)
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        _publish(consultation_id, {"event": "passages", "data": snapshot})
        _publish(consultation_id, {"event": "stage", "data": {"stage": "generating"}})

        text = ""
        last_save = time.monotonic()
        generate_started = time.monotonic()
        metered: MeteredResult | None = None
        async for event in stream_answer(prepared, purpose="answer",
                                         consultation_id=consultation_id):
            if isinstance(event, TextDelta):
                if not text:
                    _publish(consultation_id, {"event": "first_token", "data": {
                        "ms": round((time.monotonic() - generate_started) * 1000)}})
                text += event.text
                _texts[consultation_id] = text
                _publish(consultation_id, {"event": "token", "data": {"text": event.text}})
                if time.monotonic() - last_save > SAVE_EVERY_SECONDS:
                    await sync_to_async(_save_partial)(consultation_id, text)
                    last_save = time.monotonic()
            else:
                metered = event
        if metered is None:
            raise RuntimeError("the model stream ended without its final result")
        await sync_to_async(_save_partial)(consultation_id, text)
        _publish(consultation_id, {"event": "stage", "data": {"stage": "verifying"}})
        generate_ms = (time.monotonic() - generate_started) * 1000
        await sync_to_async(_complete, thread_sensitive=False)(
            consultation_id, text, metered, {"generate_ms": round(generate_ms, 1)})
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
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        _publish(consultation_id, {"event": "final", "data": snapshot})
        _publish(consultation_id, None)
        _tasks.pop(consultation_id, None)
        _texts.pop(consultation_id, None)


async def consultation_events(consultation_id: int) -> AsyncIterator[dict[str, Any]]:
    """Events for one page: a snapshot first, then live tokens until the final snapshot."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    _subscribers.setdefault(consultation_id, []).append(queue)
    try:
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        if consultation_id in _texts:
            # No await between these lines: the text and the queue agree exactly.
            snapshot["answer_text"] = _texts[consultation_id]
            _drop_queued_tokens(queue)
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


def _drop_queued_tokens(queue: asyncio.Queue[dict[str, Any] | None]) -> None:
    kept = []
    while not queue.empty():
        event = queue.get_nowait()
        if event is None or event["event"] != "token":
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
        if len(text) > sent:
            yield {"event": "token", "data": {"text": text[sent:]}}
            sent = len(text)
        if snapshot["finished"]:
            yield {"event": "final", "data": snapshot}
            return
        if await sync_to_async(_claim)(consultation_id):
            _start_task(consultation_id)
            yield {"event": "restarted", "data": {}}
            return


