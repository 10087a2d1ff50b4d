"""Every model call becomes a ModelCall row: tokens, latency, cost, outcome.

`metered_chat` and `metered_stream` are the one way the app calls the model server for an
answer: each records its call, succeeded or failed, the same way for every caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from asgiref.sync import sync_to_async

from modelsvc.client import ChatResult, StreamDone, TextDelta, get_client
from modelsvc.errors import ModelServiceError
from modelsvc.models import ModelCall, ServedModel

logger = logging.getLogger(__name__)

_MICRO = Decimal("0.000001")


def cost_of(served_model: ServedModel | None, prompt_tokens: int,
            completion_tokens: int) -> Decimal:
    """Cost from the registry's per-1k prices; a call outside the registry costs nothing."""
    if served_model is None:
        return Decimal("0")
    cost = (Decimal(served_model.cost_per_1k_prompt) * prompt_tokens
            + Decimal(served_model.cost_per_1k_completion) * completion_tokens) / 1000
    return cost.quantize(_MICRO, rounding=ROUND_HALF_UP)


def record_call(*, result: ChatResult | None, error: ModelServiceError | None, purpose: str,
                model_name: str, served_model: ServedModel | None = None,
                consultation_id: int | None = None) -> ModelCall:
    """Store one call. Pass `result` for a success, `error` for a failure (tokens 0)."""
    if (result is None) == (error is None):
        raise ValueError("record_call needs exactly one of result and error")
    prompt_tokens = result.prompt_tokens if result else 0
    completion_tokens = result.completion_tokens if result else 0
    call = ModelCall.objects.create(
        served_model=served_model,
        model_name=(result.model if result and result.model else model_name)[:200],
        adapter=(served_model.name if served_model and served_model.adapter_path else "")[:200],
        purpose=purpose[:32],
        consultation_id=consultation_id,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost_of(served_model, prompt_tokens, completion_tokens),
        time_to_first_token_ms=result.time_to_first_token_ms if result else None,
        total_ms=result.total_ms if result else 0,
        succeeded=error is None,
        error=error.message if error else "",
        error_kind=type(error).__name__ if error else "",
        finish_reason=(result.finish_reason or "")[:32] if result else "",
    )
    if error is not None:
        logger.info("model call %s for %s failed: %s (%s)", call.pk, purpose,
                    type(error).__name__, error.detail[:200])
    return call


@dataclass(frozen=True)
class MeteredResult:
    """A finished call and the ModelCall row that records it."""

    result: ChatResult
    call: ModelCall


@dataclass(frozen=True)
class MeteredCall:
    """Who is calling which model, and why: what `record_call` stores beside the outcome."""

    model_name: str
    purpose: str
    served_model: ServedModel | None = None
    consultation_id: int | None = None

    def record(self, *, result: ChatResult | None = None,
               error: ModelServiceError | None = None) -> ModelCall:
        return record_call(result=result, error=error, purpose=self.purpose,
                           model_name=self.model_name, served_model=self.served_model,
                           consultation_id=self.consultation_id)


def metered_chat(messages: list[dict[str, Any]], *, meter: MeteredCall, max_tokens: int,
                 response_format: dict[str, Any] | None = None) -> MeteredResult:
    """One completion, recorded whether it succeeds or not (the error is raised again)."""
    try:
        result = get_client().chat(messages, model=meter.model_name, max_tokens=max_tokens,
                                   response_format=response_format)
    except ModelServiceError as error:
        meter.record(error=error)
        raise
    return MeteredResult(result, meter.record(result=result))


async def metered_stream(messages: list[dict[str, Any]], *, meter: MeteredCall,
                         max_tokens: int, response_format: dict[str, Any] | None = None,
                         ) -> AsyncIterator[TextDelta | MeteredResult]:
    """The streamed completion's text deltas, then its MeteredResult; recorded like
    `metered_chat`. A consumer that stops early leaves no row: nothing finished.

    Closing this generator (`aclosing`, as every caller does) closes the client's stream at
    once, so the model server stops generating: an async generator left unclosed is closed only
    when the garbage collector gets to it, if its event loop still runs then."""
    stream = get_client().astream_chat(messages, model=meter.model_name, max_tokens=max_tokens,
                                       response_format=response_format)
    try:
        async with aclosing(stream):
            async for event in stream:
                if isinstance(event, StreamDone):
                    call = await sync_to_async(meter.record)(result=event.result)
                    yield MeteredResult(event.result, call)
                else:
                    yield event
    except ModelServiceError as error:
        await sync_to_async(meter.record)(error=error)
        raise
