"""One client for the OpenAI-compatible chat protocol: `transformers serve` locally, `vllm serve`
in production, unchanged.

- Timeouts on connect; a streamed reply has one for its first text (MODEL_FIRST_TOKEN_TIMEOUT,
  queueing and prompt reading included) and one between texts after that
  (MODEL_TOKEN_GAP_TIMEOUT), never one for the whole reply, so a long answer that keeps coming
  is never cut off and a stalled one is noticed at once. A reply that is not streamed waits at
  most MODEL_READ_TIMEOUT.
- Guards stop a streamed reply that repeats itself or runs past `max_tokens`; it ends with
  `finish_reason` "repetition" or "length", and the server stops generating (the request is
  closed).
- A stream that ends without `[DONE]` or a finish reason (the connection was cut) raises
  ModelStreamTruncatedError: a fragment is never passed off as a whole reply.
- Retries with backoff (tenacity) on connection errors, 429 and 5xx only, and only before any
  text has been received; a 4xx such as "maximum context length" is permanent and not retried.
- A consumer that stops iterating a stream closes the upstream HTTP request, so the server
  stops generating (vLLM aborts the request on disconnect): a sync stream when it is dropped,
  an async one when it is closed (`contextlib.aclosing`) or its task is cancelled inside it; an
  async generator merely abandoned is closed only whenever the garbage collector gets to it.
- Callers see only `modelsvc.errors` exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import socket
import threading
import time
import weakref
import zlib
from collections.abc import AsyncGenerator, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pydantic
from django.conf import settings
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from modelsvc import protocol
from modelsvc.errors import (
    ContextLengthError,
    ModelProtocolError,
    ModelRateLimitedError,
    ModelRequestError,
    ModelServiceError,
    ModelTimeoutError,
    ModelUnavailableError,
)
from modelsvc.tokens import count_message_tokens

logger = logging.getLogger(__name__)

# Why a streamed reply ended early: the guards' finish reasons, beside the server's "stop" and
# "length".
STOPPED_REPEATING = "repetition"
STOPPED_AT_LENGTH = "length"
# A window of ordinary prose compresses to about 60% of its length; text looping on a phrase or
# a numbering ("1. 1. 2. 2. ...") to under 25%.
_REPETITIVE_RATIO = 0.3
_LENGTH_SLACK = 8

_CONTEXT_LENGTH = re.compile(
    r"context length|context window|maximum context|max_model_len|too long|too many tokens|"
    r"exceeds? the model", re.IGNORECASE)


@dataclass(frozen=True)
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: int | None
    total_ms: int
    finish_reason: str | None
    model: str


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class StreamDone:
    result: ChatResult


StreamEvent = TextDelta | StreamDone


class ModelStreamTruncatedError(ModelUnavailableError):
    """The stream ended without its end marker (`[DONE]` or a finish reason): the connection
    was cut, so the text received is a fragment, never a whole answer."""


def _truncated() -> ModelStreamTruncatedError:
    return ModelStreamTruncatedError(
        "The model server's reply was cut off before it finished (the connection ended without "
        "the end-of-answer marker), so the partial text was discarded; try again.")


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str = ""
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    first_token_timeout: float = 180.0
    token_gap_timeout: float = 30.0
    repetition_window: int = 300
    max_retries: int = 2
    backoff_initial: float = 0.25
    backoff_max: float = 4.0

    @classmethod
    def from_settings(cls) -> ClientConfig:
        return cls(
            base_url=str(settings.MODEL_BASE_URL).rstrip("/"),
            api_key=settings.MODEL_API_KEY,
            connect_timeout=float(settings.MODEL_CONNECT_TIMEOUT),
            read_timeout=float(settings.MODEL_READ_TIMEOUT),
            first_token_timeout=float(settings.MODEL_FIRST_TOKEN_TIMEOUT),
            token_gap_timeout=float(settings.MODEL_TOKEN_GAP_TIMEOUT),
            repetition_window=int(settings.MODEL_REPETITION_WINDOW),
            max_retries=int(settings.MODEL_MAX_RETRIES),
        )

    @property
    def server_root(self) -> str:
        """`/health` lives at the server root, next to `/v1`."""
        return re.sub(r"/v1$", "", self.base_url)


def _ms(since: float) -> int:
    return int(round((time.perf_counter() - since) * 1000))


def error_from_status(status: int, body: bytes | str, *, base_url: str,
                      retry_after: str | None = None) -> ModelServiceError:
    detail = protocol.error_text(body)
    error: ModelServiceError
    if status == 429:
        error = ModelRateLimitedError(
            "The model server is busy right now; try again in a minute.",
            detail=detail, status_code=status)
        try:
            error.retry_after = float(retry_after) if retry_after else None
        except ValueError:
            pass
    elif status >= 500 or status == 408:
        error = ModelUnavailableError(
            f"The model server failed to answer (HTTP {status}); try again in a minute, and "
            "tell an administrator if it keeps happening.", detail=detail, status_code=status)
    elif status in (400, 413, 422) and _CONTEXT_LENGTH.search(detail):
        error = ContextLengthError(
            "The question and its evidence are too long for the model's context window; "
            "shorten the question or the patient note.", detail=detail, status_code=status)
    elif status in (401, 403):
        error = ModelRequestError(
            "The model server refused our credentials; an administrator should check "
            "MODEL_API_KEY.", detail=detail, status_code=status)
    elif status == 404:
        error = ModelRequestError(
            f"The model server at {base_url} does not know this model or endpoint; an "
            "administrator should check MODEL_NAME and the model registry.",
            detail=detail, status_code=status)
    else:
        error = ModelRequestError(
            f"The model server rejected the request (HTTP {status}: {detail[:160]}); an "
            "administrator should check MODEL_NAME and the model registry.",
            detail=detail, status_code=status)
    return error


def error_from_exception(exc: Exception, *, base_url: str) -> ModelServiceError:
    if isinstance(exc, ModelServiceError):
        return exc
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        return ModelUnavailableError(
            f"The model server at {base_url} cannot be reached; check that it is running "
            "(./run starts the local one) and that MODEL_BASE_URL is right.", detail=repr(exc))
    if isinstance(exc, httpx.TimeoutException):
        return ModelTimeoutError(
            "The model server took too long to answer; try again, and tell an administrator "
            "if it keeps happening (MODEL_READ_TIMEOUT).", detail=repr(exc))
    if isinstance(exc, httpx.HTTPError):
        return ModelUnavailableError(
            f"The connection to the model server at {base_url} broke off; try again in a "
            "minute.", detail=repr(exc))
    if isinstance(exc, pydantic.ValidationError | ValueError):
        return ModelProtocolError(
            "The model server answered in an unexpected format; an administrator should check "
            "that MODEL_BASE_URL points at an OpenAI-compatible server.", detail=str(exc)[:500])
    raise exc


def no_first_token(config: ClientConfig, detail: str = "") -> ModelTimeoutError:
    return ModelTimeoutError(
        f"The model server sent no text within {config.first_token_timeout:g} s "
        "(MODEL_FIRST_TOKEN_TIMEOUT); it may be busy with other questions. Try again, and tell "
        "an administrator if it keeps happening.", detail=detail)


def is_repetitive(text: str, window: int) -> bool:
    """True when the last `window` characters loop: they compress to under 30% of their size."""
    if window <= 0 or len(text) < window:
        return False
    tail = text[-window:].encode()
    return len(zlib.compress(tail, 9)) < _REPETITIVE_RATIO * len(tail)


class _StreamReader:
    """Turns `data:` lines into text deltas and, at the end, a ChatResult; keeps the clocks
    of the per-token timeouts and the guards."""

    def __init__(self, model: str, started: float, config: ClientConfig,
                 max_tokens: int, messages: list[dict[str, Any]]) -> None:
        self.model = model
        self.messages = messages
        self.started = started
        self.config = config
        self.max_tokens = max_tokens
        self.parts: list[str] = []
        self.text = ""
        self.content_chunks = 0
        self.last_text_at = started
        self.first_token_ms: int | None = None
        self.finish_reason: str | None = None
        self.usage: protocol.Usage | None = None
        self.done = False

    def feed(self, line: str) -> str | None:
        if not line.startswith("data:"):
            return None  # blank separators, ": keep-alive" comments, event: lines
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return None
        chunk = protocol.ChatCompletionChunk.model_validate_json(payload)
        if not chunk.choices and chunk.usage is None and '"error"' in payload:
            raise ModelUnavailableError(
                "The model server stopped with an error while answering; try again.",
                detail=protocol.error_text(payload))
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        text = ""
        for choice in chunk.choices:
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            if choice.delta.content:
                text += choice.delta.content
        if not text:
            return None
        if self.first_token_ms is None:
            self.first_token_ms = _ms(self.started)
        self.last_text_at = time.perf_counter()
        self.content_chunks += 1
        self.parts.append(text)
        self.text += text
        return text

    def seconds_left(self) -> float:
        """Until the first text is due, or the next one once text has started."""
        if self.first_token_ms is None:
            return self.started + self.config.first_token_timeout - time.perf_counter()
        return self.last_text_at + self.config.token_gap_timeout - time.perf_counter()

    def timed_out(self) -> ModelTimeoutError:
        if self.first_token_ms is None:
            return no_first_token(self.config)
        return ModelTimeoutError(
            f"The model server stopped sending text for {self.config.token_gap_timeout:g} s "
            "in the middle of the answer (MODEL_TOKEN_GAP_TIMEOUT); try again, and tell an "
            "administrator if it keeps happening.")

    def guard(self) -> bool:
        """True (and the finish reason set) when the reply must stop here."""
        if self.content_chunks > self.max_tokens + _LENGTH_SLACK:
            # One chunk is at least one token: a server that ignores max_tokens is stopped (with
            # some slack, so a server that keeps to it sends its usage before it ends).
            self.finish_reason = STOPPED_AT_LENGTH
            return True
        if is_repetitive(self.text, self.config.repetition_window):
            self.finish_reason = STOPPED_REPEATING
            return True
        return False

    def result(self) -> ChatResult:
        if self.usage is None:
            # No usage chunk: a server without include_usage support, or a stream the guards
            # cut short. One chunk is one token on both servers; the prompt is counted with the
            # served model's tokenizer, as the token budget counts it.
            logger.debug("stream ended without usage; counting chunks and the prompt")
        return ChatResult(
            text="".join(self.parts),
            prompt_tokens=(self.usage.prompt_tokens if self.usage
                           else count_message_tokens(self.messages)),
            completion_tokens=(self.usage.completion_tokens if self.usage
                               else self.content_chunks),
            time_to_first_token_ms=self.first_token_ms,
            total_ms=_ms(self.started),
            finish_reason=self.finish_reason,
            model=self.model,
        )


_END = object()


def _lines_within(response: httpx.Response, reader: _StreamReader) -> Iterator[str]:
    """The response's lines, each waited for no longer than the reader's clocks allow.

    A blocking read cannot be given a new deadline per line, so a thread reads and this waits
    on a queue; when the consumer stops, the caller closes the response, which ends the read.
    """
    lines: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def pump() -> None:
        try:
            for line in response.iter_lines():
                lines.put(line)
        except Exception as exc:  # handed to the consumer, which raises it as its own
            lines.put(exc)
        lines.put(_END)

    threading.Thread(target=pump, name="model-stream-reader", daemon=True).start()
    while True:
        try:
            item = lines.get(timeout=max(reader.seconds_left(), 0))
        except queue.Empty:
            raise reader.timed_out() from None
        if item is _END:
            return
        if isinstance(item, Exception):
            raise item
        yield item


def _hang_up(response: httpx.Response) -> None:
    """Close a response whose body a reader thread may be blocked on.

    Closing a socket does not wake a thread blocked reading it; shutting it down does, and
    tells the server at once.
    """
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the server
    response.close()


class ModelClient:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._timeout = httpx.Timeout(connect=config.connect_timeout, read=config.read_timeout,
                                      write=config.read_timeout, pool=config.connect_timeout)
        # A stream's clocks are kept by _StreamReader; the socket's timeout only backs them up
        # (servers send a stream's headers at once, so it is the clocks that count).
        self._stream_timeout = httpx.Timeout(
            connect=config.connect_timeout, write=config.read_timeout,
            pool=config.connect_timeout,
            read=max(config.first_token_timeout, config.token_gap_timeout))
        self._client_options: dict[str, Any] = {
            "base_url": config.base_url + "/", "headers": headers, "timeout": self._timeout,
            "follow_redirects": False,
        }
        self._http = httpx.Client(**self._client_options)
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                       httpx.AsyncClient] = (
            weakref.WeakKeyDictionary())

    # --- plumbing ------------------------------------------------------------------------
    def _request(self, messages: list[dict[str, Any]], *, model: str, max_tokens: int,
                 temperature: float, response_format: dict[str, Any] | None,
                 stream: bool) -> dict[str, Any]:
        try:
            request = protocol.ChatCompletionRequest(
                model=model, messages=[protocol.ChatMessage(**m) for m in messages],
                max_tokens=max_tokens, temperature=temperature, stream=stream,
                stream_options=protocol.StreamOptions() if stream else None,
                response_format=response_format)
        except (pydantic.ValidationError, TypeError) as exc:
            raise ModelRequestError(
                "The request to the model was malformed; this is a bug, and it is logged.",
                detail=str(exc)[:500]) from None
        return request.body()

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(multiplier=self.config.backoff_initial,
                                          max=self.config.backoff_max)(state)
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after:
            return float(min(max(backoff, retry_after), self.config.backoff_max))
        return float(backoff)

    def _retry_options(self) -> dict[str, Any]:
        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            logger.warning("model server request failed (attempt %d of %d), retrying: %r",
                           state.attempt_number, self.config.max_retries + 1, error)

        return {
            "stop": stop_after_attempt(self.config.max_retries + 1),
            "wait": self._wait,
            "retry": retry_if_exception(
                lambda e: isinstance(e, ModelServiceError) and e.retryable),
            "reraise": True,
            "before_sleep": log_retry,
        }

    def _check(self, response: httpx.Response, body: bytes) -> None:
        if response.status_code != 200:
            raise error_from_status(response.status_code, body, base_url=self.config.base_url,
                                    retry_after=response.headers.get("retry-after"))

    def _async_http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(**self._client_options)
            self._async_clients[loop] = client
        return client

    # --- public API ----------------------------------------------------------------------
    def chat(self, messages: list[dict[str, Any]], *, model: str, max_tokens: int,
             temperature: float = 0.0, response_format: dict[str, Any] | None = None,
             ) -> ChatResult:
        body = self._request(messages, model=model, max_tokens=max_tokens,
                             temperature=temperature, response_format=response_format,
                             stream=False)
        started = time.perf_counter()

        def attempt() -> ChatResult:
            try:
                response = self._http.post("chat/completions", json=body)
                self._check(response, response.content)
                parsed = protocol.ChatCompletionResponse.model_validate_json(response.content)
            except Exception as exc:
                raise error_from_exception(exc, base_url=self.config.base_url) from None
            if not parsed.choices:
                raise ModelProtocolError("The model server answered without a choice; an "
                                         "administrator should check the server.")
            usage = parsed.usage or protocol.Usage()
            return ChatResult(
                text=parsed.choices[0].message.content or "",
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                time_to_first_token_ms=None, total_ms=_ms(started),
                finish_reason=parsed.choices[0].finish_reason, model=parsed.model or model)

        result: ChatResult = Retrying(**self._retry_options())(attempt)
        return result

    def _open_stream(self, body: dict[str, Any]) -> httpx.Response:
        def attempt() -> httpx.Response:
            response: httpx.Response | None = None
            try:
                request = self._http.build_request("POST", "chat/completions", json=body,
                                                   timeout=self._stream_timeout)
                response = self._http.send(request, stream=True)
                if response.status_code != 200:
                    content = response.read()
                    response.close()
                    self._check(response, content)
                return response
            except httpx.ReadTimeout as exc:
                raise no_first_token(self.config, repr(exc)) from None
            except Exception as exc:
                if response is not None:
                    response.close()
                raise error_from_exception(exc, base_url=self.config.base_url) from None

        response: httpx.Response = Retrying(**self._retry_options())(attempt)
        return response

    def stream_chat(self, messages: list[dict[str, Any]], *, model: str, max_tokens: int,
                    temperature: float = 0.0, response_format: dict[str, Any] | None = None,
                    ) -> Generator[StreamEvent, None, None]:
        body = self._request(messages, model=model, max_tokens=max_tokens,
                             temperature=temperature, response_format=response_format,
                             stream=True)
        started = time.perf_counter()
        response = self._open_stream(body)
        reader = _StreamReader(model, started, self.config, max_tokens, messages)
        try:
            for line in _lines_within(response, reader):
                text = reader.feed(line)
                if text is not None:
                    yield TextDelta(text)
                if reader.done or (text is not None and reader.guard()):
                    break
            if not reader.done and reader.finish_reason is None:
                raise _truncated()
        except ModelServiceError:
            raise
        except Exception as exc:
            raise error_from_exception(exc, base_url=self.config.base_url) from None
        finally:
            # Also runs when the consumer stops early (GeneratorExit) or a guard or clock stops
            # the reply: dropping the connection makes the server stop generating.
            _hang_up(response)
        yield StreamDone(reader.result())

    async def _aopen_stream(self, body: dict[str, Any]) -> httpx.Response:
        http = self._async_http()
        response: httpx.Response | None = None
        async for attempt in AsyncRetrying(**self._retry_options()):
            with attempt:
                try:
                    request = http.build_request("POST", "chat/completions", json=body,
                                                 timeout=self._stream_timeout)
                    response = await http.send(request, stream=True)
                    if response.status_code != 200:
                        content = await response.aread()
                        await response.aclose()
                        self._check(response, content)
                except httpx.ReadTimeout as exc:
                    raise no_first_token(self.config, repr(exc)) from None
                except Exception as exc:
                    if response is not None:
                        await response.aclose()
                    raise error_from_exception(exc, base_url=self.config.base_url) from None
        assert response is not None
        return response

    async def astream_chat(self, messages: list[dict[str, Any]], *, model: str,
                           max_tokens: int, temperature: float = 0.0,
                           response_format: dict[str, Any] | None = None,
                           ) -> AsyncGenerator[StreamEvent, None]:
        body = self._request(messages, model=model, max_tokens=max_tokens,
                             temperature=temperature, response_format=response_format,
                             stream=True)
        started = time.perf_counter()
        response = await self._aopen_stream(body)
        reader = _StreamReader(model, started, self.config, max_tokens, messages)
        lines = response.aiter_lines()
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: it never swallows the task's own cancel.
                    async with asyncio.timeout(max(reader.seconds_left(), 0)):
                        line = await anext(lines)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise reader.timed_out() from None
                text = reader.feed(line)
                if text is not None:
                    yield TextDelta(text)
                if reader.done or (text is not None and reader.guard()):
                    break
            if not reader.done and reader.finish_reason is None:
                raise _truncated()
        except ModelServiceError:
            raise
        except Exception as exc:
            raise error_from_exception(exc, base_url=self.config.base_url) from None
        finally:
            # Runs on early exit and on task cancellation: the upstream request is closed.
            await response.aclose()
        yield StreamDone(reader.result())

    def check_ready(self, timeout: float, *, model: str | None = None) -> dict[str, Any]:
        """`/health` plus a one-token completion, both within `timeout` seconds in all."""
        model = model or settings.MODEL_NAME
        deadline = time.perf_counter() + timeout

        def remaining() -> float:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise ModelTimeoutError(
                    f"The model server at {self.config.base_url} did not become ready within "
                    f"{timeout:g}s; it may still be loading the model, try again shortly.")
            return left

        started = time.perf_counter()
        try:
            left = remaining()
            health = self._http.get(
                self.config.server_root + "/health",
                timeout=httpx.Timeout(left, connect=min(left, self.config.connect_timeout)))
            if health.status_code != 200:
                raise ModelUnavailableError(
                    f"The model server at {self.config.server_root} reports it is not healthy "
                    f"(HTTP {health.status_code}); it may still be starting.",
                    detail=protocol.error_text(health.content),
                    status_code=health.status_code)
            health_ms = _ms(started)
            completion_started = time.perf_counter()
            left = remaining()
            body = self._request([{"role": "user", "content": "Reply with OK."}], model=model,
                                 max_tokens=1, temperature=0.0, response_format=None,
                                 stream=False)
            response = self._http.post(
                "chat/completions", json=body,
                timeout=httpx.Timeout(left, connect=min(left, self.config.connect_timeout)))
            self._check(response, response.content)
            parsed = protocol.ChatCompletionResponse.model_validate_json(response.content)
        except httpx.TimeoutException as exc:
            raise ModelTimeoutError(
                f"The model server at {self.config.base_url} did not answer a one-token "
                f"request within {timeout:g}s; it may be overloaded or still loading.",
                detail=repr(exc)) from None
        except Exception as exc:
            raise error_from_exception(exc, base_url=self.config.base_url) from None
        return {
            "base_url": self.config.base_url,
            "model": parsed.model or model,
            "health_ms": health_ms,
            "completion_ms": _ms(completion_started),
            "completion_tokens": parsed.usage.completion_tokens if parsed.usage else None,
        }

    def close(self) -> None:
        self._http.close()


_lock = threading.Lock()
_client: ModelClient | None = None


def get_client() -> ModelClient:
    """The process's client, rebuilt when the settings it was built from change."""
    global _client
    config = ClientConfig.from_settings()
    with _lock:
        if _client is None or _client.config != config:
            _client = ModelClient(config)
        return _client
