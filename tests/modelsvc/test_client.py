"""The OpenAI-protocol client against the real tiny model server and a misbehaving double."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import pytest

from modelsvc.client import ChatResult, ClientConfig, ModelClient, StreamDone, TextDelta, get_client
from modelsvc.errors import (
    ContextLengthError,
    ModelRateLimitedError,
    ModelRequestError,
    ModelServiceError,
    ModelTimeoutError,
    ModelUnavailableError,
)
from tests.modelsvc.doubles import ModelServerDouble, Reply, completion

HELLO = [{"role": "user", "content": "Say hello."}]


def fast_client(base_url: str, **overrides: Any) -> ModelClient:
    options: dict[str, Any] = {"base_url": base_url, "connect_timeout": 1.0,
                               "read_timeout": 2.0, "max_retries": 2,
                               "backoff_initial": 0.01, "backoff_max": 0.05}
    return ModelClient(ClientConfig(**{**options, **overrides}))


# --- the real tiny model server ------------------------------------------------------------

@pytest.mark.model_server
def test_it_completes_with_usage(model_server: dict[str, str]) -> None:
    result = get_client().chat(HELLO, model=model_server["model"], max_tokens=4)

    assert isinstance(result, ChatResult)
    assert result.completion_tokens == 4
    assert result.prompt_tokens > 5
    assert result.finish_reason == "length"
    assert result.time_to_first_token_ms is None
    assert result.model == model_server["model"]


@pytest.mark.model_server
def test_it_streams_deltas_then_a_result_with_usage(model_server: dict[str, str]) -> None:
    events = list(get_client().stream_chat(HELLO, model=model_server["model"], max_tokens=6))

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert isinstance(events[-1], StreamDone)
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    result = events[-1].result
    assert result.text == "".join(d.text for d in deltas)
    assert result.completion_tokens == 6
    assert result.prompt_tokens > 5
    assert result.time_to_first_token_ms is not None
    assert 0 <= result.time_to_first_token_ms <= result.total_ms


@pytest.mark.model_server
def test_it_streams_asynchronously(model_server: dict[str, str]) -> None:
    async def collect() -> list[Any]:
        return [event async for event in get_client().astream_chat(
            HELLO, model=model_server["model"], max_tokens=5)]

    events = asyncio.run(collect())

    assert isinstance(events[-1], StreamDone)
    assert events[-1].result.completion_tokens == 5
    assert events[-1].result.text == "".join(e.text for e in events[:-1])


@pytest.mark.model_server
def test_readiness_checks_health_and_a_one_token_completion(
        model_server: dict[str, str]) -> None:
    detail = get_client().check_ready(timeout=10)

    assert detail["model"] == model_server["model"]
    assert detail["completion_tokens"] == 1
    assert detail["health_ms"] >= 0 and detail["completion_ms"] >= 0


@pytest.mark.model_server
def test_a_wrong_model_name_is_a_permanent_error_with_advice(
        model_server: dict[str, str]) -> None:
    with pytest.raises(ModelRequestError) as caught:
        get_client().chat(HELLO, model="no-such-model", max_tokens=2)

    assert caught.value.permanent
    assert "MODEL_NAME" in caught.value.message


def test_get_client_follows_settings_changed_at_runtime(settings: Any) -> None:
    settings.MODEL_BASE_URL = "http://127.0.0.1:1/v1"
    first = get_client()
    assert get_client() is first

    settings.MODEL_BASE_URL = "http://127.0.0.1:2/v1"
    second = get_client()

    assert second is not first
    assert second.config.base_url == "http://127.0.0.1:2/v1"


# --- retries and permanent errors (a real local double) ------------------------------------

def test_it_retries_429_then_succeeds() -> None:
    with ModelServerDouble([Reply(status=429, body={"error": {"message": "busy"}},
                                  headers={"retry-after": "0.01"}),
                            Reply(body=completion("fine"))]) as double:
        result = fast_client(double.base_url).chat(HELLO, model="m", max_tokens=3)

    assert result.text == "fine"
    assert len(double.requests) == 2


def test_it_gives_up_on_5xx_after_its_retries_with_a_temporary_error() -> None:
    with ModelServerDouble([Reply(status=503, body={"detail": "overloaded"})]) as double:
        with pytest.raises(ModelUnavailableError) as caught:
            fast_client(double.base_url, max_retries=2).chat(HELLO, model="m", max_tokens=3)

    assert len(double.requests) == 3
    assert not caught.value.permanent
    assert caught.value.status_code == 503
    assert "try again" in caught.value.message


def test_a_context_length_400_is_permanent_and_not_retried() -> None:
    vllm_error = {"object": "error", "code": 400, "type": "BadRequestError",
                  "message": "This model's maximum context length is 8192 tokens. However, you "
                             "requested 9000 tokens."}
    with ModelServerDouble([Reply(status=400, body=vllm_error)]) as double:
        with pytest.raises(ContextLengthError) as caught:
            fast_client(double.base_url).chat(HELLO, model="m", max_tokens=3)

    assert len(double.requests) == 1
    assert caught.value.permanent
    assert "too long" in caught.value.message
    assert "8192" in caught.value.detail


def test_a_stream_is_retried_only_before_it_opens() -> None:
    with ModelServerDouble([Reply(status=500, body={"detail": "boom"}),
                            Reply(stream=["a", "b"])]) as double:
        events = list(fast_client(double.base_url).stream_chat(HELLO, model="m", max_tokens=3))

    assert len(double.requests) == 2
    assert events[-1].result.text == "ab"  # type: ignore[union-attr]
    assert events[-1].result.completion_tokens == 2  # type: ignore[union-attr]


def test_a_slow_chunk_times_out_with_our_error_not_httpx() -> None:
    with ModelServerDouble([Reply(stream=["a", "b", "c"], chunk_delay=3.0)]) as double:
        client = fast_client(double.base_url, token_gap_timeout=0.3)
        received: list[str] = []
        started = time.monotonic()
        with pytest.raises(ModelTimeoutError) as caught:
            for event in client.stream_chat(HELLO, model="m", max_tokens=3):
                if isinstance(event, TextDelta):
                    received.append(event.text)

    assert received == ["a"]
    assert time.monotonic() - started < 2.5
    assert len(double.requests) == 1  # a timeout is not retried
    assert not caught.value.permanent
    assert "MODEL_TOKEN_GAP_TIMEOUT" in caught.value.message


def test_a_reply_with_no_first_text_in_time_says_so() -> None:
    # Headers and an empty first chunk at once, as real servers send them; the text is late.
    with ModelServerDouble([Reply(stream=["", "a"], chunk_delay=3.0)]) as double:
        client = fast_client(double.base_url, first_token_timeout=0.4, token_gap_timeout=10)
        started = time.monotonic()
        with pytest.raises(ModelTimeoutError) as caught:
            list(client.stream_chat(HELLO, model="m", max_tokens=3))

    assert time.monotonic() - started < 2.5
    assert "MODEL_FIRST_TOKEN_TIMEOUT" in caught.value.message


def test_the_timeouts_are_per_token_so_a_long_steady_reply_is_never_cut_off() -> None:
    texts = [f"word{i} " for i in range(12)]
    with ModelServerDouble([Reply(stream=texts, first_delay=0.6, chunk_delay=0.15)]) as double:
        # The whole reply takes about 2.4 s: longer than either timeout, shorter than neither
        # of the gaps it has.
        client = fast_client(double.base_url, read_timeout=0.5, first_token_timeout=1.5,
                             token_gap_timeout=0.5)
        events = list(client.stream_chat(HELLO, model="m", max_tokens=20))

    result = events[-1].result  # type: ignore[union-attr]
    assert result.text == "".join(texts) and result.finish_reason == "stop"
    assert result.total_ms > 1500


def test_the_async_stream_keeps_the_same_per_token_clocks() -> None:
    with ModelServerDouble([Reply(stream=["a", "b", "c"], chunk_delay=3.0)]) as double:
        client = fast_client(double.base_url, token_gap_timeout=0.3)

        async def collect() -> list[Any]:
            return [event async for event in client.astream_chat(HELLO, model="m",
                                                                 max_tokens=3)]

        started = time.monotonic()
        with pytest.raises(ModelTimeoutError) as caught:
            asyncio.run(collect())

    assert time.monotonic() - started < 2.5
    assert "MODEL_TOKEN_GAP_TIMEOUT" in caught.value.message


# --- guards --------------------------------------------------------------------------------

def test_a_reply_that_repeats_itself_is_stopped_and_says_why() -> None:
    numbering = [f"{n}. {n}. " for n in range(1, 400)]
    with ModelServerDouble([Reply(stream=["Aspirin lowers the risk of stroke [1]. ",
                                          *numbering], chunk_delay=0.02)]) as double:
        events = list(fast_client(double.base_url, repetition_window=300).stream_chat(
            HELLO, model="m", max_tokens=1000))

        assert double.client_hung_up.wait(5)
    result = events[-1].result  # type: ignore[union-attr]
    assert result.finish_reason == "repetition"
    assert result.text.startswith("Aspirin lowers the risk of stroke [1]. 1. 1. 2. 2.")
    assert double.chunks_sent < 200


def test_ordinary_prose_is_not_taken_for_repetition() -> None:
    prose = ("Low-dose aspirin reduces the risk of recurrent ischaemic stroke by about a fifth "
             "in patients with a previous non-cardioembolic stroke or TIA [1]. The benefit is "
             "largest in the first weeks after the event [2]. Major bleeding increases "
             "modestly, with an excess of one to two extracranial bleeds per 1000 "
             "patient-years [3].")
    with ModelServerDouble([Reply(stream=prose.split(" "))]) as double:
        events = list(fast_client(double.base_url, repetition_window=300).stream_chat(
            HELLO, model="m", max_tokens=1000))

    assert events[-1].result.finish_reason == "stop"  # type: ignore[union-attr]


def test_a_server_that_ignores_max_tokens_is_stopped_at_the_length_guard() -> None:
    with ModelServerDouble([Reply(stream=[f"w{i} " for i in range(300)],
                                  chunk_delay=0.005)]) as double:
        events = list(fast_client(double.base_url).stream_chat(HELLO, model="m",
                                                               max_tokens=10))

        assert double.client_hung_up.wait(5)
    result = events[-1].result  # type: ignore[union-attr]
    assert result.finish_reason == "length"
    assert 10 <= result.completion_tokens <= 20


def test_an_unreachable_server_is_a_temporary_error_after_retries() -> None:
    client = fast_client("http://127.0.0.1:9/v1", max_retries=1)

    with pytest.raises(ModelUnavailableError) as caught:
        client.chat(HELLO, model="m", max_tokens=3)

    assert "cannot be reached" in caught.value.message
    assert isinstance(caught.value, ModelServiceError)


def test_rate_limited_errors_say_so() -> None:
    with ModelServerDouble([Reply(status=429, body={"detail": "slow down"})]) as double:
        with pytest.raises(ModelRateLimitedError):
            fast_client(double.base_url, max_retries=0).chat(HELLO, model="m", max_tokens=3)


def test_usage_is_counted_from_chunks_when_the_server_sends_none() -> None:
    with ModelServerDouble([Reply(stream=["x", "y", "z"], usage=None)]) as double:
        events = list(fast_client(double.base_url).stream_chat(HELLO, model="m", max_tokens=3))

    assert events[-1].result.completion_tokens == 3  # type: ignore[union-attr]


# --- a client that goes away stops generation upstream -------------------------------------

def test_stopping_a_stream_closes_the_upstream_request() -> None:
    with ModelServerDouble([Reply(stream=[f"t{i}" for i in range(400)],
                                  chunk_delay=0.02)]) as double:
        stream = fast_client(double.base_url).stream_chat(HELLO, model="m", max_tokens=400)
        for event in stream:
            if isinstance(event, TextDelta) and event.text == "t2":
                break
        stream.close()  # what a for-loop's owner does when the browser disconnects

        assert double.client_hung_up.wait(5)
        assert double.chunks_sent < 300  # of 400: it stopped early


def _cancel_after_three_chunks(double: ModelServerDouble,
                               consume: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        task = asyncio.create_task(consume())
        while double.chunks_sent < 3:
            await asyncio.sleep(0.01)
        task.cancel()  # the SSE view's task is cancelled when the browser goes away
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_cancelling_a_task_waiting_on_an_async_stream_closes_the_upstream_request() -> None:
    with ModelServerDouble([Reply(stream=[f"t{i}" for i in range(400)],
                                  chunk_delay=0.02)]) as double:
        client = fast_client(double.base_url)

        async def consume() -> None:
            # Nothing awaited between texts: the task only ever waits inside the stream, so
            # the cancel lands there.
            async for _event in client.astream_chat(HELLO, model="m", max_tokens=400):
                pass

        _cancel_after_three_chunks(double, consume)

        assert double.client_hung_up.wait(5)
        assert double.chunks_sent < 300  # of 400: it stopped early


def test_closing_an_async_stream_while_its_consumer_waits_elsewhere_closes_the_request(
        ) -> None:
    with ModelServerDouble([Reply(stream=[f"t{i}" for i in range(400)],
                                  chunk_delay=0.02)]) as double:
        client = fast_client(double.base_url)

        async def consume() -> None:
            # The consumer is busy with its own work (a database write, a publish) when the
            # cancel comes, so the stream is not running; `aclosing`, as every caller uses,
            # closes it all the same.
            never = asyncio.Event()
            async with aclosing(client.astream_chat(HELLO, model="m", max_tokens=400)) as stream:
                async for _event in stream:
                    await never.wait()

        _cancel_after_three_chunks(double, consume)

        assert double.client_hung_up.wait(5)
        assert double.chunks_sent < 300  # of 400: it stopped early


# --- readiness -----------------------------------------------------------------------------

def test_readiness_fails_clearly_when_health_is_not_ok() -> None:
    with ModelServerDouble([Reply(body=completion("k"))], health_status=503) as double:
        with pytest.raises(ModelUnavailableError) as caught:
            fast_client(double.base_url).check_ready(timeout=2, model="m")

    assert "not healthy" in caught.value.message
    assert double.requests == []


def test_readiness_fails_when_the_one_token_completion_misses_the_deadline() -> None:
    with ModelServerDouble([Reply(body=completion("k"), first_delay=3.0)]) as double:
        started = time.monotonic()
        with pytest.raises(ModelTimeoutError) as caught:
            fast_client(double.base_url, read_timeout=30).check_ready(timeout=0.5, model="m")

    assert time.monotonic() - started < 2.5
    assert "0.5s" in caught.value.message
    assert double.requests[0]["max_tokens"] == 1
