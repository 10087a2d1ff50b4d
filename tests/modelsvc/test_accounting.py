from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from decimal import Decimal
from typing import Any, cast

import pytest

from modelsvc.accounting import MeteredCall, cost_of, metered_stream, record_call
from modelsvc.client import ChatResult
from modelsvc.errors import ModelUnavailableError
from modelsvc.models import ModelCall, ServedModel
from modelsvc.selectors import (
    consultation_call_totals,
    consultation_totals_by_purpose,
    totals_by_model,
    totals_by_purpose,
)
from tests.modelsvc.doubles import ModelServerDouble, Reply

pytestmark = pytest.mark.django_db


@pytest.fixture
def priced_adapter() -> ServedModel:
    return ServedModel.objects.create(
        name="lit-lora", base_model="base", served_name="lit-lora", adapter_path="/a/lit",
        capability="literature", cost_per_1k_prompt=Decimal("0.5"),
        cost_per_1k_completion=Decimal("1.5"), status=ServedModel.Status.SERVING)


@pytest.fixture
def consultation(clinician: object) -> object:
    from clinic.models import Consultation

    return Consultation.objects.create(user=clinician, question="q?")


def result(prompt: int, completion: int, model: str = "lit-lora") -> ChatResult:
    return ChatResult(text="t", prompt_tokens=prompt, completion_tokens=completion,
                      time_to_first_token_ms=40, total_ms=300, finish_reason="stop", model=model)


def test_cost_comes_from_the_per_1k_prices(priced_adapter: ServedModel) -> None:
    assert cost_of(priced_adapter, 2000, 100) == Decimal("1.150000")
    assert cost_of(None, 2000, 100) == Decimal("0")


def test_a_successful_call_is_recorded_with_tokens_latency_and_cost(
        priced_adapter: ServedModel, consultation: object) -> None:
    call = record_call(result=result(1000, 200), error=None, purpose="answer",
                       model_name="ignored", served_model=priced_adapter,
                       consultation_id=consultation.pk)  # type: ignore[attr-defined]

    call.refresh_from_db()
    assert (call.prompt_tokens, call.completion_tokens) == (1000, 200)
    assert call.cost == Decimal("0.800000")
    assert call.adapter == "lit-lora" and call.model_name == "lit-lora"
    assert (call.time_to_first_token_ms, call.total_ms) == (40, 300)
    assert call.succeeded and call.finish_reason == "stop"


def test_a_failed_call_is_recorded_with_its_message(consultation: object) -> None:
    error = ModelUnavailableError("The model server cannot be reached; try again.")

    call = record_call(result=None, error=error, purpose="answer", model_name="m",
                       consultation_id=consultation.pk)  # type: ignore[attr-defined]

    assert not call.succeeded
    assert call.error == error.message and call.error_kind == "ModelUnavailableError"
    assert call.cost == 0 and call.prompt_tokens == 0


def test_it_needs_exactly_one_of_result_and_error() -> None:
    with pytest.raises(ValueError):
        record_call(result=None, error=None, purpose="answer", model_name="m")


def test_totals_per_consultation_stage_and_model(priced_adapter: ServedModel,
                                                 consultation: object) -> None:
    cid = consultation.pk  # type: ignore[attr-defined]
    record_call(result=result(1000, 100), error=None, purpose="plan",
                model_name="x", served_model=priced_adapter, consultation_id=cid)
    record_call(result=result(2000, 300), error=None, purpose="answer",
                model_name="x", served_model=priced_adapter, consultation_id=cid)
    record_call(result=None, error=ModelUnavailableError("down"), purpose="answer",
                model_name="other", consultation_id=cid)
    record_call(result=result(5, 5, model="base"), error=None, purpose="readiness",
                model_name="base")

    totals = consultation_call_totals(cid)
    assert (totals.calls, totals.failed) == (3, 1)
    assert (totals.prompt_tokens, totals.completion_tokens) == (3000, 400)
    assert totals.cost == Decimal("2.100000")
    stages = consultation_totals_by_purpose(cid)
    assert set(stages) == {"plan", "answer"} and stages["answer"].calls == 2
    assert totals_by_purpose()["readiness"].prompt_tokens == 5
    by_model = totals_by_model()
    assert by_model["lit-lora"].cost == Decimal("2.100000")
    assert by_model["other"].failed == 1
    assert ModelCall.objects.count() == 4


def test_closing_a_metered_stream_closes_the_model_request_before_it_returns(
        settings: Any) -> None:
    with ModelServerDouble([Reply(stream=[f"t{i}" for i in range(400)],
                                  chunk_delay=0.02)]) as double:
        settings.MODEL_BASE_URL, settings.MODEL_MAX_RETRIES = double.base_url, 0
        meter = MeteredCall(model_name="m", purpose="answer")

        async def read_three_then_close() -> bool:
            stream = cast(AsyncGenerator[Any, None], metered_stream(
                [{"role": "user", "content": "Hello?"}], meter=meter, max_tokens=400))
            async with aclosing(stream):
                received = 0
                async for _event in stream:
                    received += 1
                    if received == 3:
                        break
            # The event loop is blocked here, so nothing left for later (an abandoned inner
            # stream's clean-up) can run: the request must already be closed.
            return double.client_hung_up.wait(5)

        assert asyncio.run(read_three_then_close())
        assert double.chunks_sent < 300  # of 400: it stopped early
    assert not ModelCall.objects.exists()  # nothing finished, so nothing is recorded
