"""The quick answer: retrieve, route, stream tokens, verify, store; as server-sent events.

Generation runs as a task of its own, detached from the browser's connection: a dropped
connection or a reload never loses the answer, the task finishes and stores it, and the page
that comes back subscribes again (or tails the database when another process generates).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from clinic.models import Consultation, RetrievedPassage
from clinic.selectors import consultation_snapshot

logger = logging.getLogger(__name__)

# A running answer whose row has not moved for this long is taken to be orphaned (its process
# died) and is generated again.
STALE_AFTER = timedelta(seconds=45)
SAVE_EVERY_SECONDS = 0.5
PASSAGES_SHOWN = 6

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


def _prepare(consultation_id: int) -> dict[str, Any]:
    """Embed, route, retrieve and store the passages; returns what generation needs."""
    from clinic.answers import prompt_passages, store_passages
    from modelsvc.router import route
    from modelsvc.tokens import fit_passages
    from retrieval.embedding import embed_query
    from retrieval.search import SearchFilters, search

    consultation = Consultation.objects.get(pk=consultation_id)
    timings: dict[str, float] = {}
    started = time.monotonic()
    query_embedding = embed_query(consultation.question)
    timings["embed_ms"] = (time.monotonic() - started) * 1000

    started = time.monotonic()
    decision = route(consultation.question, query_embedding)
    timings["route_ms"] = (time.monotonic() - started) * 1000
    consultation.routed_capability = decision.capability
    consultation.routed_model = decision.served_model
    consultation.routed_model_name = decision.model_name
    consultation.routing_confidence = decision.confidence
    consultation.routing_fallback = decision.fallback
    consultation.use_retrieval = decision.use_retrieval
    consultation.suggested_deep = decision.deep

    passages: list[RetrievedPassage] = []
    consultation.passages.all().delete()
    if decision.use_retrieval:
        started = time.monotonic()
        result = search(consultation.question, k=PASSAGES_SHOWN, mode="hybrid+rerank",
                        filters=SearchFilters(exclude_retracted=False),
                        query_embedding=query_embedding)
        timings["retrieve_ms"] = (time.monotonic() - started) * 1000
        timings.update({f"retrieve_{k}": v for k, v in result.timings_ms.items()})
        consultation.index_version = result.index_version
        passages = store_passages(consultation, result.hits)

    from modelsvc.prompts import PROMPT_VERSION, build_answer_messages, build_no_retrieval_messages

    if passages:
        fitted = fit_passages(consultation.question, prompt_passages(passages),
                              max_completion_tokens=settings.ANSWER_MAX_TOKENS,
                              patient_note=consultation.patient_note)
        kept = {p.number for p in fitted}
        dropped = [p.pk for p in passages if p.rank not in kept]
        if dropped:
            RetrievedPassage.objects.filter(pk__in=dropped).delete()
            passages = [p for p in passages if p.rank in kept]
        messages = build_answer_messages(consultation.question, fitted,
                                         patient_note=consultation.patient_note)
    else:
        fit_passages(consultation.question, [], max_completion_tokens=settings.ANSWER_MAX_TOKENS,
                     patient_note=consultation.patient_note)
        messages = build_no_retrieval_messages(consultation.question,
                                               patient_note=consultation.patient_note)
    consultation.prompt_version = PROMPT_VERSION
    consultation.stage_timings = {k: round(v, 1) for k, v in timings.items()}
    consultation.save()
    return {"messages": messages, "model": decision.model_name,
            "served_model": decision.served_model}


def _record_failure(consultation_id: int, error: Any) -> None:
    from modelsvc.accounting import record_call

    consultation = Consultation.objects.select_related("routed_model").get(pk=consultation_id)
    record_call(result=None, error=error, purpose="answer",
                model_name=consultation.routed_model_name or settings.MODEL_NAME,
                served_model=consultation.routed_model, consultation_id=consultation_id)


def _save_partial(consultation_id: int, text: str) -> None:
    Consultation.objects.filter(pk=consultation_id, status=Consultation.Status.RUNNING).update(
        answer_text=text, updated_at=timezone.now())


def _complete(consultation_id: int, text: str, result: Any, served_model: Any,
              timings: dict[str, float]) -> None:
    from clinic.answers import finalize_answer
    from modelsvc.accounting import record_call

    consultation = Consultation.objects.get(pk=consultation_id)
    started = time.monotonic()
    with transaction.atomic():
        call = record_call(result=result, error=None, purpose="answer",
                           model_name=result.model or consultation.routed_model_name,
                           served_model=served_model, consultation_id=consultation_id)
        consultation.prompt_tokens = result.prompt_tokens
        consultation.completion_tokens = result.completion_tokens
        consultation.cost = call.cost
        consultation.time_to_first_token_ms = result.time_to_first_token_ms
        consultation.stage_timings = {**consultation.stage_timings, **timings}
        consultation.save(update_fields=["prompt_tokens", "completion_tokens", "cost",
                                         "time_to_first_token_ms", "stage_timings", "updated_at"])
        finalize_answer(consultation, text, list(consultation.passages.all()))
    verify_ms = (time.monotonic() - started) * 1000
    total_ms = int((timezone.now() - consultation.started_at).total_seconds() * 1000) \
        if consultation.started_at else None
    Consultation.objects.filter(pk=consultation_id).update(
        total_ms=total_ms,
        stage_timings={**consultation.stage_timings, "verify_ms": round(verify_ms, 1)})


async def _generate(consultation_id: int) -> None:
    from modelsvc.client import StreamDone, TextDelta, get_client
    from modelsvc.errors import ModelServiceError
    from retrieval.search import RetrievalError

    try:
        _publish(consultation_id, {"event": "stage", "data": {"stage": "retrieving"}})
        prepared = await sync_to_async(_prepare, thread_sensitive=False)(consultation_id)
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        _publish(consultation_id, {"event": "passages", "data": snapshot})
        _publish(consultation_id, {"event": "stage", "data": {"stage": "generating"}})

        text = ""
        last_save = time.monotonic()
        generate_started = time.monotonic()
        result = None
        async for event in get_client().astream_chat(
                prepared["messages"], model=prepared["model"],
                max_tokens=settings.ANSWER_MAX_TOKENS):
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
            elif isinstance(event, StreamDone):
                result = event.result
        await sync_to_async(_save_partial)(consultation_id, text)
        _publish(consultation_id, {"event": "stage", "data": {"stage": "verifying"}})
        generate_ms = (time.monotonic() - generate_started) * 1000
        await sync_to_async(_complete, thread_sensitive=False)(
            consultation_id, text, result, prepared["served_model"],
            {"generate_ms": round(generate_ms, 1)})
    except ModelServiceError as error:
        logger.warning("answer %s failed at the model server: %s", consultation_id, error.message)
        await sync_to_async(_record_failure)(consultation_id, error)
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


