"""The answering pipeline: one path, so the clinician and the evaluation ask the model alike.

Requests are recorded where they leave the app, at an OpenAI-compatible HTTP server double;
retrieval runs on a real index over the synthetic articles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db.models.signals import post_delete
from django.test import Client

from clinic.answering import prepare_answer
from clinic.models import Consultation, RetrievedPassage
from evaluation import harness, suites
from evaluation.suites import EvalItem
from modelsvc.accounting import MeteredCall, MeteredResult, metered_chat, metered_stream
from modelsvc.errors import ModelUnavailableError
from modelsvc.models import ModelCall
from modelsvc.prompts import build_answer_messages, format_passage
from modelsvc.tokens import count_message_tokens, count_tokens
from tests.modelsvc.doubles import ModelServerDouble, Reply, completion
from tests.web.streams import parse_events, read_stream

QUESTION = "Does low-dose aspirin prevent recurrent stroke?"
ANSWER = "Low-dose aspirin lowers the risk of recurrent stroke [1]."
RETRACTED_PMID = "90000005"


@pytest.fixture
def model_double(settings: Any) -> Iterator[ModelServerDouble]:
    """The clinician's streamed answer first, then a plain completion for everyone else."""
    replies = [Reply(stream=["Low-dose aspirin lowers ", "the risk of recurrent stroke [1]."]),
               Reply(body=completion(ANSWER))]
    with ModelServerDouble(replies) as double:
        settings.MODEL_BASE_URL, settings.MODEL_NAME = double.base_url, "recorded-model"
        settings.MODEL_MAX_RETRIES = 0
        yield double


def _quick_answer(client: Client, clinician: User, question: str) -> Consultation:
    client.force_login(clinician)
    response = client.post("/", {"question": question, "quick": "1"})
    assert response.status_code == 302, response.content
    consultation = Consultation.objects.latest("id")
    events = parse_events(read_stream(client.get(f"/consultations/{consultation.pk}/events")))
    assert events[-1][0] == "final"
    consultation.refresh_from_db()
    return consultation


def _reviewed_suite_answer(question: str, settings: Any) -> dict[str, Any]:
    """What the harness does for one question of the `reviewed` suite."""
    suite = suites.get_suite("reviewed")
    served_model, model_name = harness.resolve_model(suite, None)
    context = harness.RunContext(
        run_id=0, suite=suite, model_name=model_name, served_model=served_model,
        structured=False, k=settings.ANSWER_PASSAGES_RETRIEVED,
        passages_shown=settings.ANSWER_PASSAGES_SHOWN,
        prompt_passages=settings.ANSWER_PASSAGES_PROMPTED, max_tokens=settings.EVAL_MAX_TOKENS,
        choice_max_tokens=settings.EVAL_CHOICE_MAX_TOKENS, judge=None)
    item = EvalItem(item_id="r1", question=question, gold="",
                    reference={"answer": ANSWER, "cited_pmids": ["90000001"]})
    return harness.answer_reviewed(context, item, "retrieval")


def test_the_evaluation_sends_the_model_the_same_messages_as_the_clinicians_quick_answer(
        client: Client, clinician: User, tiny_index: Path, model_double: ModelServerDouble,
        settings: Any) -> None:
    consultation = _quick_answer(client, clinician, QUESTION)
    evaluated = _reviewed_suite_answer(QUESTION, settings)

    assert consultation.status == "complete", consultation.error_message
    clinician_request, evaluation_request = model_double.requests
    assert clinician_request["stream"] is True
    assert json.dumps(evaluation_request["messages"]) == json.dumps(clinician_request["messages"])
    assert evaluation_request["model"] == clinician_request["model"] == "recorded-model"
    # Both read the passages the clinician was shown, and never a retracted article.
    shown = list(consultation.passages.order_by("rank").values_list("pmid", flat=True))
    prompt = clinician_request["messages"][-1]["content"]
    assert shown and all(f'pmid="{pmid}"' in prompt for pmid in shown)
    assert RETRACTED_PMID not in shown and RETRACTED_PMID not in prompt
    assert RETRACTED_PMID not in evaluated["retrieved_pmids"]
    assert evaluated["extra"]["prompt_passages"] == len(shown)
    # One recorded call each, in the one place every caller records it.
    assert consultation.model_calls.get().purpose == "answer"
    assert ModelCall.objects.filter(purpose="evaluation").count() == 1
    assert ModelCall.objects.count() == 2


def test_only_the_passages_that_fit_the_context_are_stored_and_none_is_deleted(
        clinician: User, tiny_index: Path, settings: Any) -> None:
    deleted: list[Any] = []

    def record_delete(sender: Any, instance: Any, **kwargs: Any) -> None:
        deleted.append(instance)

    unfitted = prepare_answer(QUESTION)
    assert not RetrievedPassage.objects.exists()  # without a consultation nothing is stored
    assert len(unfitted.passages) >= 3
    first_two = unfitted.prompted[:2]
    # Room for the question, the answer and the first two passages, but not a useful third.
    settings.MODEL_CONTEXT_TOKENS = (
        count_message_tokens(build_answer_messages(QUESTION, []))
        + settings.ANSWER_MAX_TOKENS
        + sum(count_tokens(format_passage(p)) + 8 for p in first_two) + 10)
    consultation = Consultation.objects.create(user=clinician, question=QUESTION)
    post_delete.connect(record_delete, sender=RetrievedPassage)
    try:
        prepared = prepare_answer(QUESTION, consultation=consultation)
    finally:
        post_delete.disconnect(record_delete, sender=RetrievedPassage)

    assert [p.number for p in prepared.prompted] == [1, 2]
    stored = list(consultation.passages.order_by("rank"))
    assert [(p.rank, p.pmid) for p in stored] == [(p.number, p.pmid) for p in first_two]
    assert deleted == []
    consultation.refresh_from_db()
    assert consultation.index_version and consultation.routed_model_name


@pytest.mark.django_db
def test_a_call_is_recorded_once_streamed_or_not_whether_it_succeeds_or_fails(
        settings: Any) -> None:
    messages = [{"role": "user", "content": "Hello?"}]
    meter = MeteredCall(model_name="recorded-model", purpose="answer")
    replies = [Reply(body=completion("Hi.")), Reply(stream=["Hi", "."]),
               Reply(status=503, body={"error": {"message": "overloaded"}})]
    with ModelServerDouble(replies) as double:
        settings.MODEL_BASE_URL, settings.MODEL_MAX_RETRIES = double.base_url, 0

        metered = metered_chat(messages, meter=meter, max_tokens=8)

        async def drain() -> list[Any]:
            return [event async for event in metered_stream(messages, meter=meter,
                                                            max_tokens=8)]

        streamed = async_to_sync(drain)()
        with pytest.raises(ModelUnavailableError):
            metered_chat(messages, meter=meter, max_tokens=8)
        with pytest.raises(ModelUnavailableError):
            async_to_sync(drain)()

    assert metered.result.text == "Hi." and metered.call.succeeded
    done = streamed[-1]
    assert isinstance(done, MeteredResult) and done.result.text == "Hi."
    calls = list(ModelCall.objects.order_by("id").values_list("succeeded", flat=True))
    assert calls == [True, True, False, False]
