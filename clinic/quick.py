"""The quick answer: the answering pipeline (clinic.answering), generated in the background and
streamed as server-sent events.

Generation starts when the question is stored (`answer_in_background`, called after the commit
by the ask page, the API and Retry), in a thread of the web process with an event loop of its
own, detached from any browser: an API client that posts and then polls gets its answer, and a
dropped connection or a reload loses nothing. A page's stream follows it: the snapshot, every
event the generation has published so far (replayed), then the live ones; a stream served by
another web process tails the database instead.

One generator at a time (fencing): it claims the row with a conditional update that stores a
fresh token in `claimed_by`, and every write it makes (passages, released text, the finished
answer, a failure) is an UPDATE ... WHERE claimed_by = token, or a transaction that begins with
one, so a generator that lost its claim writes nothing and stops. Its heartbeat (`claimed_at`,
every HEARTBEAT_EVERY_SECONDS, through embedding, retrieval, the model's prefill and the
writing) keeps the claim; only a heartbeat older than QUICK_ANSWER_LEASE_SECONDS lets another
process take the answer over. Cancel clears the claim: the generator stops at its next
heartbeat (at once when it runs in the same process) and the upstream model request is closed.
A model stream cut off before its end marker is discarded and the answer written again, up to
QUICK_ANSWER_MAX_ATTEMPTS attempts; then it fails with the reason, never stored as complete.
A database that goes away for a moment (a PostgreSQL restart, a failover) does not end the
answer: each of the generator's reads and writes is tried again on a fresh connection for up to
DATABASE_OUTAGE_SECONDS, and the model's stream goes on meanwhile.

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
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from datetime import timedelta
from typing import Any, TypeVar, cast

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from clinic.answering import (
    Passage,
    PreparedAnswer,
    SentenceCheck,
    Verification,
    check_sentence,
    finalize_answer,
    prepare_answer,
    store_prepared,
    stream_answer,
    verify_answer,
)
from clinic.models import Consultation
from clinic.selectors import consultation_snapshot
from modelsvc.accounting import MeteredResult
from modelsvc.citations import ParsedClaim, parse_answer
from modelsvc.client import ModelStreamTruncatedError, TextDelta
from modelsvc.errors import ModelServiceError
from retrieval.search import RetrievalError

logger = logging.getLogger(__name__)

Event = dict[str, Any]
T = TypeVar("T")

# How often the generator refreshes its claim, and so how soon it notices a cancel or a takeover.
HEARTBEAT_EVERY_SECONDS = 1.0
TAIL_EVERY_SECONDS = 0.4
RETRY_HINT = "Your question is saved; press Retry."
# How long a generator waits out a database that went away (a restart takes seconds) before
# it gives the answer up to the lease, under which another generator takes it over.
DATABASE_OUTAGE_SECONDS = 20.0


def _reconnect(state: RetryCallState) -> None:
    """Before the next try: drop this thread's broken connection, so the try opens a new one."""
    logger.warning("quick answer: the database was unavailable (%s); trying again",
                   type(state.outcome.exception()).__name__ if state.outcome else "error")
    for connection in connections.all(initialized_only=True):
        try:
            connection.close()
        except (InterfaceError, OperationalError):
            connection.connection = None  # already gone; Django opens a new one next time


def through_outage(function: Callable[..., T]) -> Callable[..., T]:
    """`function`, tried again on a fresh connection while the database is unreachable.

    Only for calls that are safe to repeat: the generator's reads, and its fenced writes, whose
    transaction either committed (a repeat then finds the claim moved on: ClaimLost) or did not.
    """
    def call(*args: Any, **kwargs: Any) -> T:
        retrying = Retrying(
            retry=retry_if_exception_type((OperationalError, InterfaceError)),
            wait=wait_exponential(multiplier=0.25, max=4), reraise=True,
            stop=stop_after_delay(DATABASE_OUTAGE_SECONDS), before_sleep=_reconnect)
        return retrying(function, *args, **kwargs)
    return call


def sse_frame(event: Event) -> str:
    """One server-sent event on the wire, as the page and the API both send it."""
    return f"event: {event['event']}\ndata: {json.dumps(event['data'])}\n\n"


class ClaimLost(Exception):
    """Cancelled, deleted, or taken over by another generator: stop, write nothing more."""


# --- the claim and the fenced writes (sync; the generator runs them on its database thread) ---

def _lease() -> timedelta:
    return timedelta(seconds=settings.QUICK_ANSWER_LEASE_SECONDS)


def _orphaned(now: Any) -> Q:
    """Waiting to start, or running with a heartbeat older than the lease (its generator died)."""
    stale = now - _lease()
    return (Q(status=Consultation.Status.PENDING)
            | Q(status=Consultation.Status.RUNNING, claimed_at__lt=stale)
            | Q(status=Consultation.Status.RUNNING, claimed_at__isnull=True, updated_at__lt=stale))


def is_orphaned(consultation: Consultation) -> bool:
    """The same test as the claim's, on a row already read (to spare a poll an UPDATE)."""
    if consultation.mode != Consultation.Mode.QUICK or consultation.cancel_requested:
        return False
    if consultation.status == Consultation.Status.PENDING:
        return True
    if consultation.status != Consultation.Status.RUNNING:
        return False
    stale = timezone.now() - _lease()
    heartbeat = consultation.claimed_at or consultation.updated_at
    return heartbeat is None or heartbeat < stale


def claim(consultation_id: int) -> str | None:
    """Take an orphaned quick answer with a fresh token (a conditional update); the token, or
    None when another generator holds it, it is finished, or its attempts are used up (then it
    is marked failed here)."""
    token = uuid.uuid4().hex
    now = timezone.now()
    claimable = Consultation.objects.filter(
        _orphaned(now), pk=consultation_id, mode=Consultation.Mode.QUICK,
        cancel_requested=False)
    taken = claimable.filter(attempts__lt=settings.QUICK_ANSWER_MAX_ATTEMPTS).update(
        status=Consultation.Status.RUNNING, claimed_by=token, claimed_at=now, started_at=now,
        updated_at=now, attempts=F("attempts") + 1, answer_text="", error_message="")
    if taken == 1:
        return token
    attempts = settings.QUICK_ANSWER_MAX_ATTEMPTS
    if claimable.update(
            status=Consultation.Status.FAILED, claimed_by="", claimed_at=None,
            completed_at=now, updated_at=now,
            error_message=f"The answer was given up after {attempts} attempt(s): the process "
            f"writing it stopped each time (restarted or out of memory). {RETRY_HINT}"):
        logger.warning("quick answer %s given up after %d attempts", consultation_id, attempts)
    return None


def _held(consultation_id: int, token: str) -> Any:
    return Consultation.objects.filter(pk=consultation_id, claimed_by=token,
                                       status=Consultation.Status.RUNNING)


def _fence(consultation_id: int, token: str, **changes: Any) -> None:
    """Refresh the heartbeat (with `changes`) if the claim is still ours; else ClaimLost.

    Inside a transaction it also locks the row (PostgreSQL) or the database (SQLite) until the
    commit, so no cancel or takeover lands between the check and the writes that follow it."""
    now = timezone.now()
    if _held(consultation_id, token).update(claimed_at=now, updated_at=now, **changes) != 1:
        raise ClaimLost


def heartbeat(consultation_id: int, token: str) -> None:
    _fence(consultation_id, token)


def save_released(consultation_id: int, token: str, text: str) -> None:
    _fence(consultation_id, token, answer_text=text)


def store_passages_fenced(consultation_id: int, token: str, prepared: PreparedAnswer) -> None:
    with transaction.atomic():
        _fence(consultation_id, token)
        store_prepared(Consultation.objects.get(pk=consultation_id), prepared)


def complete(consultation_id: int, token: str, text: str, metered: MeteredResult,
             timings: dict[str, float], verification: Verification, passages: list[Passage],
             ) -> None:
    """Store the verified answer and end the claim, in one transaction that begins fenced."""
    with transaction.atomic():
        _fence(consultation_id, token)
        result = metered.result
        consultation = Consultation.objects.get(pk=consultation_id)
        consultation.prompt_tokens = result.prompt_tokens
        consultation.completion_tokens = result.completion_tokens
        consultation.cost = metered.call.cost
        consultation.time_to_first_token_ms = result.time_to_first_token_ms
        consultation.stage_timings = {**consultation.stage_timings, **timings}
        consultation.total_ms = (int((timezone.now() - consultation.started_at).total_seconds()
                                     * 1000) if consultation.started_at else None)
        consultation.error_message = ""
        consultation.claimed_by = ""
        consultation.claimed_at = None
        consultation.save(update_fields=[
            "prompt_tokens", "completion_tokens", "cost", "time_to_first_token_ms",
            "stage_timings", "total_ms", "error_message", "claimed_by", "claimed_at",
            "updated_at"])
        finalize_answer(consultation, text, passages, verification=verification)


def fail(consultation_id: int, token: str, message: str) -> bool:
    """Mark it failed with the reason, if the claim is still ours; True if it was."""
    now = timezone.now()
    return _held(consultation_id, token).update(
        status=Consultation.Status.FAILED, error_message=message, claimed_by="",
        claimed_at=None, completed_at=now, updated_at=now) == 1


def begin_retry(consultation_id: int, token: str, reason: str) -> bool:
    """After a cut-off stream: discard the partial text and try again if attempts are left
    (True), else mark it failed with the reason (False). ClaimLost if no longer ours."""
    most = settings.QUICK_ANSWER_MAX_ATTEMPTS
    now = timezone.now()
    again = _held(consultation_id, token).filter(attempts__lt=most).update(
        attempts=F("attempts") + 1, answer_text="", claimed_at=now, updated_at=now,
        error_message=f"{reason} Writing the answer again.")
    if again == 1:
        return True
    if fail(consultation_id, token, f"{reason} It happened {most} time(s), so the answer was "
            f"given up. {RETRY_HINT}"):
        return False
    raise ClaimLost


# --- what one process's generations publish, for the pages that follow them ------------------

class _Subscriber:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def put(self, event: Event | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:
            pass  # its page went away and its loop is closed


class _Channel:
    """Every event of one generation in this process, kept so a page that subscribes late gets
    all of them in order, then the live ones; subscribers live on other threads' loops."""

    def __init__(self, consultation_id: int) -> None:
        self.consultation_id = consultation_id
        self.lock = threading.Lock()
        self.history: list[Event] = []
        self.subscribers: list[_Subscriber] = []
        self.closed = False
        self.done = threading.Event()
        self.run: _Generation | None = None

    def publish(self, event: Event) -> None:
        with self.lock:
            self.history.append(event)
            for subscriber in self.subscribers:
                subscriber.put(event)

    def subscribe(self) -> tuple[list[Event], _Subscriber] | None:
        subscriber = _Subscriber()
        with self.lock:
            if self.closed:
                return None
            self.subscribers.append(subscriber)
            return list(self.history), subscriber

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        with self.lock:
            if subscriber in self.subscribers:
                self.subscribers.remove(subscriber)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for subscriber in self.subscribers:
                subscriber.put(None)
            self.subscribers.clear()
        with _channels_lock:
            if _channels.get(self.consultation_id) is self:
                del _channels[self.consultation_id]
        self.done.set()


_channels: dict[int, _Channel] = {}
_channels_lock = threading.Lock()


def answer_in_background(consultation_id: int) -> bool:
    """Generate this answer here unless someone else does: claims it if it is orphaned (waiting,
    or its generator's heartbeat is stale) and starts the generator thread. True if this
    process generates it (now or already). Call it after the commit that stored the question."""
    with _channels_lock:
        if consultation_id in _channels:
            return True
        # Reserved before the claim, so a page of this process that asks meanwhile follows it.
        channel = _channels[consultation_id] = _Channel(consultation_id)
    token = claim(consultation_id)
    if token is None:
        channel.close()  # a page that subscribed meanwhile falls back to the database
        return False
    threading.Thread(target=_generate_in_thread, args=(channel, token), daemon=True,
                     name=f"quick-answer-{consultation_id}").start()
    logger.info("quick answer %s: generating (token %s)", consultation_id, token[:8])
    return True


def stop_local(consultation_id: int) -> None:
    """Stop this process's generator of the answer now (its claim is already gone)."""
    with _channels_lock:
        channel = _channels.get(consultation_id)
    if channel is not None and channel.run is not None:
        channel.run.stop_soon()


def wait_for_local(consultation_id: int, timeout: float) -> bool:
    """Wait until this process's generator of the answer has ended; True if none is left."""
    with _channels_lock:
        channel = _channels.get(consultation_id)
    return channel is None or channel.done.wait(timeout)


def _generate_in_thread(channel: _Channel, token: str) -> None:
    try:
        asyncio.run(_Generation(channel, token).main())
    except Exception:
        logger.exception("quick answer %s: the generator thread failed", channel.consultation_id)
    finally:
        if not channel.closed:
            channel.close()


# --- streaming sentence by sentence ---------------------------------------------------------

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

    def __init__(self, generation: _Generation, passages: list[Passage]) -> None:
        self.generation = generation
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

    async def cancel(self) -> None:
        if not self.worker.done():
            self.worker.cancel()
        await asyncio.gather(self.worker, return_exceptions=True)

    def _stage(self, stage: str) -> None:
        self.generation.publish({"event": "stage", "data": {
            "stage": stage, "written": self.written, "checked": self.checked,
            "released": self.released, "held": self.held, "withholding": self.stopped}})

    async def _check_in_order(self) -> None:
        while (claim := await self.queue.get()) is not None:
            if self.stopped:
                self.checked += 1
                continue
            check: SentenceCheck = await self.generation.off_loop(
                check_sentence, claim, self.passages)
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
        # Stored before it is sent: a page that reloads never loses a sentence it was shown.
        await self.generation.write(save_released, self.text)
        self.generation.publish({"event": "sentence", "data": {
            "text": piece, "citations": list(check.claim.citations),
            "verdict": check.support.verdict, "passage": check.support.passage}})


# --- one generation ---------------------------------------------------------------------------

class _Generation:
    """One claimed generation, on an event loop of its own. Its database work runs on one
    thread of its own (thread-sensitive calls, the model call's record included), so the
    heartbeat never waits behind embedding, retrieval or verification, which run off the loop
    on other threads."""

    def __init__(self, channel: _Channel, token: str) -> None:
        self.channel = channel
        self.consultation_id = channel.consultation_id
        self.token = token
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False

    # --- plumbing -----------------------------------------------------------------------------
    def publish(self, event: Event) -> None:
        self.channel.publish(event)

    async def write(self, fenced: Callable[..., T], *args: Any) -> T:
        """A fenced write on the database thread; ClaimLost (and the generation stops) when the
        claim is gone."""
        try:
            return await sync_to_async(through_outage(fenced))(self.consultation_id, self.token,
                                                               *args)
        except ClaimLost:
            self.stop()
            raise

    async def read(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await sync_to_async(through_outage(function))(*args, **kwargs)

    async def off_loop(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """CPU-bound work (embedding, retrieval, verification) on a worker thread, whose
        database connection (if it opened one) is closed afterwards."""
        def run() -> T:
            try:
                return function(*args, **kwargs)
            finally:
                connections.close_all()
        return await sync_to_async(run, thread_sensitive=False)()

    def stop(self) -> None:
        """Stop generating (the claim is gone): the model call is abandoned, which closes it."""
        if self.stopping or self.task is None:
            return
        self.stopping = True
        self.task.cancel()

    def stop_soon(self) -> None:
        """From another thread: stop at once rather than at the next heartbeat."""
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.stop)
            except RuntimeError:
                pass  # it has already ended

    async def _keep_claim(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_SECONDS)
            try:
                await self.write(heartbeat)
            except ClaimLost:
                logger.info("quick answer %s: claim lost (cancelled or taken over); stopping",
                            self.consultation_id)
                return

    # --- the run ------------------------------------------------------------------------------
    async def main(self) -> None:
        task = self.task = asyncio.current_task()
        assert task is not None
        self.loop = asyncio.get_running_loop()
        self.channel.run = self
        database = ThreadPoolExecutor(max_workers=1,
                                      thread_name_prefix=f"quick-db-{self.consultation_id}")
        try:
            async with ThreadSensitiveContext(executor=database):
                keeper = asyncio.create_task(self._keep_claim())
                try:
                    await self._attempts()
                except (asyncio.CancelledError, ClaimLost):
                    if task.cancelling():
                        task.uncancel()
                finally:
                    self.stopping = True  # a late stop request must not cancel the wrap-up
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
                    await self._wrap_up()
        finally:
            database.shutdown(wait=True)

    async def _wrap_up(self) -> None:
        try:
            snapshot = await self.read(consultation_snapshot, self.consultation_id)
        except Consultation.DoesNotExist:
            snapshot = None
        # Finished (by us, or cancelled): the final state. Still running: another generator took
        # it over, and the pages following this one tail the database instead.
        if snapshot is not None and snapshot["finished"]:
            self.publish({"event": "final", "data": snapshot})
        self.channel.close()
        await self.read(connections.close_all)

    async def _attempts(self) -> None:
        while True:
            try:
                await self._answer_once()
                return
            except ModelStreamTruncatedError as error:
                logger.warning("quick answer %s: the model stream was cut off: %s",
                               self.consultation_id, error.detail or error.message)
                reason = ("The model server's reply was cut off before it finished, so the "
                          "partial text was discarded.")
                if not await self.write(begin_retry, reason):
                    return
                self.publish({"event": "snapshot", "data": await self.read(
                    consultation_snapshot, self.consultation_id)})
            except ModelServiceError as error:
                logger.warning("quick answer %s failed at the model server: %s",
                               self.consultation_id, error.message)
                await self.write(fail, f"{error.message} {RETRY_HINT}")
                return
            except RetrievalError as error:
                logger.warning("quick answer %s failed at retrieval: %s", self.consultation_id,
                               error)
                await self.write(fail, f"{error} {RETRY_HINT}")
                return
            except (asyncio.CancelledError, ClaimLost):
                raise
            except (OperationalError, InterfaceError) as error:
                logger.warning("quick answer %s: the database stayed unavailable: %s",
                               self.consultation_id, type(error).__name__)
                await self.write(fail, "The database was unavailable while the answer was "
                                 f"being written. {RETRY_HINT}")
                return
            except Exception:
                logger.exception("quick answer %s failed unexpectedly", self.consultation_id)
                await self.write(fail, "Something went wrong while answering; the error is "
                                 f"logged. {RETRY_HINT}")
                return

    async def _answer_once(self) -> None:
        self.publish({"event": "stage", "data": {"stage": "retrieving"}})
        consultation = await self.read(Consultation.objects.get, pk=self.consultation_id)
        prepared = await self.off_loop(
            prepare_answer, consultation.question, patient_note=consultation.patient_note,
            include_retracted=consultation.include_retracted)
        await self.write(store_passages_fenced, prepared)
        snapshot = await self.read(consultation_snapshot, self.consultation_id)
        self.publish({"event": "passages", "data": snapshot})
        self.publish({"event": "stage", "data": {"stage": "writing"}})

        draft = ""
        generate_started = time.monotonic()
        passages = list(prepared.passages)
        gate = SentenceGate(self, passages)
        try:
            metered: MeteredResult | None = None
            # Closed however the loop ends (a lost claim, a cancel): the model stops writing.
            # (metered_stream is an async generator, declared as an iterator.)
            stream = cast(AsyncGenerator[TextDelta | MeteredResult, None], stream_answer(
                prepared, purpose="answer", consultation_id=self.consultation_id))
            async with aclosing(stream):
                async for event in stream:
                    if isinstance(event, TextDelta):
                        if not draft:
                            self.publish({"event": "first_token", "data": {
                                "ms": round((time.monotonic() - generate_started) * 1000)}})
                        draft += event.text
                        gate.feed(draft)
                    else:
                        metered = event
            if metered is None:
                raise ModelStreamTruncatedError("The model stream ended without its result.")
            generate_ms = (time.monotonic() - generate_started) * 1000
            gate.feed(draft, finished=True)
            await gate.close()
        finally:
            await gate.cancel()
        self.publish({"event": "stage", "data": {"stage": "verifying"}})
        verify_started = time.monotonic()
        verification = await self.off_loop(verify_answer, draft, passages,
                                           require_citations=prepared.use_retrieval)
        timings = {"generate_ms": round(generate_ms, 1),
                   "verify_ms": round((time.monotonic() - verify_started) * 1000, 1)}
        if gate.first_release_at is not None:
            timings["first_sentence_ms"] = round(
                (gate.first_release_at - generate_started) * 1000, 1)
        await self.write(complete, draft, metered, timings, verification, passages)


# --- the page's stream ------------------------------------------------------------------------

async def consultation_events(consultation_id: int) -> AsyncIterator[Event]:
    """Events for one page: a snapshot, then what the generator has published and publishes,
    until the final snapshot. Starts generating an answer nobody is generating (waiting, or its
    generator died)."""
    snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
    if snapshot["finished"]:
        yield {"event": "snapshot", "data": snapshot}
        yield {"event": "final", "data": snapshot}
        return
    while True:
        if await sync_to_async(answer_in_background)(consultation_id):
            async for event in _follow_local(consultation_id, snapshot):
                yield event
                if event["event"] == "final":
                    return
            # The generator here lost its claim to another process: follow that one instead.
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        yield {"event": "snapshot", "data": snapshot}
        if snapshot["finished"]:
            yield {"event": "final", "data": snapshot}
            return
        async for event in _tail_database(consultation_id, len(snapshot["answer_text"])):
            yield event
            if event["event"] == "final":
                return
        # Its generator died: loop, and take the answer over.


async def _follow_local(consultation_id: int, snapshot: Event) -> AsyncIterator[Event]:
    with _channels_lock:
        channel = _channels.get(consultation_id)
    subscription = channel.subscribe() if channel is not None else None
    if subscription is None:
        return  # it ended a moment ago; the caller reads the outcome from the database
    history, subscriber = subscription
    try:
        # The history starts with the claim, which emptied the answer: the sentences replayed
        # rebuild it exactly, so the snapshot comes without the text it had.
        yield {"event": "snapshot", "data": {**snapshot, "answer_text": ""}}
        for event in history:
            yield event
        while (live := await subscriber.queue.get()) is not None:
            yield live
    finally:
        assert channel is not None
        channel.unsubscribe(subscriber)


async def _tail_database(consultation_id: int, sent: int) -> AsyncIterator[Event]:
    """Another process is generating: relay what it saves until it finishes or goes stale (the
    evidence once it is stored, then the released sentences)."""
    evidence_sent = False
    while True:
        await asyncio.sleep(TAIL_EVERY_SECONDS)
        consultation = await sync_to_async(Consultation.objects.get)(pk=consultation_id)
        if is_orphaned(consultation):
            return
        snapshot = await sync_to_async(consultation_snapshot)(consultation_id)
        if snapshot["passages"] and not evidence_sent and not snapshot["finished"]:
            evidence_sent = True
            yield {"event": "passages", "data": snapshot}
            yield {"event": "stage", "data": {"stage": "writing"}}
        text = snapshot["answer_text"]
        if len(text) < sent:
            # The other generator started the answer again (a cut-off stream): start over.
            yield {"event": "snapshot", "data": snapshot}
            sent = len(text)
        elif len(text) > sent and not snapshot["finished"]:
            # The other process saves released sentences only (see SentenceGate).
            yield {"event": "sentence", "data": {"text": text[sent:], "citations": [],
                                                 "verdict": "supported", "passage": None}}
            sent = len(text)
        if snapshot["finished"]:
            yield {"event": "final", "data": snapshot}
            return
