"""One client for the OpenAI-compatible chat protocol: `transformers serve` locally, `vllm serve`
in production, unchanged.

- Timeouts on connect and on each response read / streamed chunk (never a library default).
- Retries with backoff (tenacity) on connection errors, 429 and 5xx only, and only before any
  text has been received; a 4xx such as "maximum context length" is permanent and not retried.
- A consumer that stops iterating a stream closes the upstream HTTP request, so the server
  stops generating (vLLM aborts the request on disconnect).
- Callers see only `modelsvc.errors` exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
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

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str = ""
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
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


class _StreamReader:
    """Turns `data:` lines into text deltas and, at the end, a ChatResult."""

    def __init__(self, model: str, started: float) -> None:
        self.model = model
        self.started = started
        self.parts: list[str] = []
        self.content_chunks = 0
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
        self.content_chunks += 1
        self.parts.append(text)
        return text

    def result(self) -> ChatResult:
        if self.usage is None:
            # A server without include_usage support: one chunk is one token on both servers.
            logger.debug("stream ended without usage; counting chunks")
        return ChatResult(
            text="".join(self.parts),
            prompt_tokens=self.usage.prompt_tokens if self.usage else 0,
            completion_tokens=(self.usage.completion_tokens if self.usage
                               else self.content_chunks),
            time_to_first_token_ms=self.first_token_ms,
            total_ms=_ms(self.started),
            finish_reason=self.finish_reason,
            model=self.model,
        )


class ModelClient:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._timeout = httpx.Timeout(connect=config.connect_timeout, read=config.read_timeout,
                                      write=config.read_timeout, pool=config.connect_timeout)
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
                request = self._http.build_request("POST", "chat/completions", json=body)
                response = self._http.send(request, stream=True)
                if response.status_code != 200:
                    content = response.read()
                    response.close()
                    self._check(response, content)
                return response
            except Exception as exc:
                if response is not None:
                    response.close()
                raise error_from_exception(exc, base_url=self.config.base_url) from None

        response: httpx.Response = Retrying(**self._retry_options())(attempt)
        return response

    def stream_chat(self, messages: list[dict[str, Any]], *, model: str, max_tokens: int,
                    temperature: float = 0.0, response_format: dict[str, Any] | None = None,
                    ) -> Iterator[StreamEvent]:
        body = self._request(messages, model=model, max_tokens=max_tokens,
                             temperature=temperature, response_format=response_format,
                             stream=True)
        started = time.perf_counter()
        response = self._open_stream(body)
        reader = _StreamReader(model, started)
        try:
            for line in response.iter_lines():
                text = reader.feed(line)
                if text is not None:
                    yield TextDelta(text)
                if reader.done:
                    break
        except ModelServiceError:
            raise
        except Exception as exc:
            raise error_from_exception(exc, base_url=self.config.base_url) from None
        finally:
            # Also runs when the consumer stops early (GeneratorExit): closing an unfinished
            # response drops the connection, and the server stops generating.
            response.close()
        yield StreamDone(reader.result())

    async def _aopen_stream(self, body: dict[str, Any]) -> httpx.Response:
        http = self._async_http()
        response: httpx.Response | None = None
        async for attempt in AsyncRetrying(**self._retry_options()):
            with attempt:
                try:
                    request = http.build_request("POST", "chat/completions", json=body)
                    response = await http.send(request, stream=True)
                    if response.status_code != 200:
                        content = await response.aread()
                        await response.aclose()
                        self._check(response, content)
                except Exception as exc:
                    if response is not None:
                        await response.aclose()
                    raise error_from_exception(exc, base_url=self.config.base_url) from None
        assert response is not None
        return response

    async def astream_chat(self, messages: list[dict[str, Any]], *, model: str,
                           max_tokens: int, temperature: float = 0.0,
                           response_format: dict[str, Any] | None = None,
                           ) -> AsyncIterator[StreamEvent]:
        body = self._request(messages, model=model, max_tokens=max_tokens,
                             temperature=temperature, response_format=response_format,
                             stream=True)
        started = time.perf_counter()
        response = await self._aopen_stream(body)
        reader = _StreamReader(model, started)
        try:
            async for line in response.aiter_lines():
                text = reader.feed(line)
                if text is not None:
                    yield TextDelta(text)
                if reader.done:
                    break
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
