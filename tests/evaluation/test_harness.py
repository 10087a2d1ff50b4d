"""Runs against the real tiny model server and a real index over the synthetic articles."""

from __future__ import annotations

import hashlib
import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from evaluation.harness import EVAL_PROMPT_SUFFIX, create_run, execute_run
from evaluation.models import EvalResult, EvalRun
from modelsvc.models import ModelCall
from modelsvc.prompts import PROMPT_VERSION

DATA = Path(__file__).parent / "data"
PUBMEDQA = DATA / "pubmedqa_synthetic.json"
MIRAGE = DATA / "mirage_synthetic.json"

pytestmark = pytest.mark.model_server


def _evaluate(*args: str) -> dict:
    out = StringIO()
    call_command("evaluate", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_a_pubmedqa_run_stores_its_metadata_and_every_answer(
        model_server: dict[str, str], tiny_index: Path) -> None:
    summary = _evaluate("--suite", "pubmedqa", "--data", str(PUBMEDQA), "--limit", "3")

    run = EvalRun.objects.get(pk=summary["id"])
    assert run.status == "complete", run.error_message
    assert run.model_name == model_server["model"]
    assert run.index_version and run.index_version == summary["index_version"]
    assert run.prompt_version == f"{PROMPT_VERSION}+{EVAL_PROMPT_SUFFIX}"
    assert run.git_commit and run.data_sha256 == hashlib.sha256(PUBMEDQA.read_bytes()).hexdigest()
    assert run.limit == 3 and run.total == run.done == 3
    # transformers serve rejects response_format: detected, and the text parser is used.
    assert run.options["structured_output"] is False
    results = list(run.results.order_by("item_id"))
    assert [r.item_id for r in results] == ["90000001", "90000002", "90000003"]
    assert results[0].retrieved_pmids[0] == "90000001" and results[0].gold_rank == 1
    assert all(r.passages and r.prompt_tokens > 0 for r in results)
    headline = run.metrics["headline"]
    counts = [headline[key] for key in ("correct", "wrong", "unparseable", "errors")]
    assert sum(counts) == 3
    assert headline["unparseable"] == sum(1 for r in results if r.outcome == "unparseable")
    assert headline["recall"]["@1"] == pytest.approx(
        sum(1 for r in results if r.gold_rank == 1) / 3)
    assert ModelCall.objects.filter(purpose="evaluation").count() == 3


def test_an_interrupted_run_resumes_without_redoing_finished_questions(
        model_server: dict[str, str], tiny_index: Path) -> None:
    run = create_run(suite_name="pubmedqa", data_paths=[PUBMEDQA], limit=3)
    finished = EvalResult.objects.create(
        run=run, item_id="90000001", condition="retrieval", question="q", gold="yes",
        predicted="yes", outcome="correct", answer_text="stored before the interruption")
    EvalRun.objects.filter(pk=run.pk).update(status="running", done=1)

    call_command("evaluate", "--resume", str(run.pk), stdout=StringIO(), stderr=StringIO())

    run.refresh_from_db()
    assert run.status == "complete" and run.done == 3
    finished.refresh_from_db()
    assert finished.answer_text == "stored before the interruption"
    assert run.results.count() == 3
    assert ModelCall.objects.filter(purpose="evaluation").count() == 2
    assert run.metrics["headline"]["correct"] >= 1

    execute_run(run.pk)  # a finished run is left alone
    assert ModelCall.objects.filter(purpose="evaluation").count() == 2


def test_mirage_runs_each_question_with_and_without_retrieval(
        model_server: dict[str, str], tiny_index: Path) -> None:
    summary = _evaluate("--suite", "mirage", "--data", str(MIRAGE), "--limit", "2",
                        "--concurrency", "3")
    run = EvalRun.objects.get(pk=summary["id"])
    assert run.status == "complete", run.error_message
    # Subsets are interleaved, so two questions cover both.
    assert sorted(run.results.values_list("item_id", "condition")) == [
        ("medmcqa:m1", "no_retrieval"), ("medmcqa:m1", "retrieval"),
        ("mmlu:u1", "no_retrieval"), ("mmlu:u1", "retrieval")]
    conditions = run.metrics["conditions"]
    assert set(conditions["retrieval"]["subsets"]) == {"medmcqa", "mmlu"}
    assert run.results.get(item_id="mmlu:u1", condition="no_retrieval").passages == []
    assert "retrieval_gain" in run.metrics


def test_the_router_suite_scores_routing_without_the_model(tiny_index: Path) -> None:
    summary = _evaluate("--suite", "router", "--data", str(PUBMEDQA), "--data", str(MIRAGE),
                        "--limit", "4")
    headline = summary["metrics"]["headline"]
    # No trained router: everything takes the literature path, so the knowledge half is wrong.
    assert headline["subsets"]["literature"]["accuracy"]["value"] == 1.0
    assert headline["subsets"]["knowledge"]["accuracy"]["value"] == 0.0
    assert headline["accuracy"]["value"] == 0.5


def test_missing_gold_articles_name_the_ingest_command(tiny_index: Path, tmp_path: Path
                                                       ) -> None:
    data = json.loads(PUBMEDQA.read_text())
    data["12345678"] = {**data["90000001"], "QUESTION": "Not indexed?"}
    path = tmp_path / "pqa.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CommandError, match=rf"manage.py ingest {path}"):
        call_command("evaluate", "--suite", "pubmedqa", "--data", str(path))
    assert not EvalRun.objects.exists()


def test_a_server_that_honours_json_schema_gets_guided_choices(
        tiny_index: Path, settings: Any) -> None:
    """Against a double that answers like vLLM with a json_schema response_format (the real
    `transformers serve` path, which rejects the field, is the first test in this file)."""
    from tests.modelsvc.doubles import ModelServerDouble, Reply, completion

    replies = [Reply(body=completion('{"answer": "A"}')),  # the probe
               Reply(body=completion('{"answer": "A"}')),
               Reply(body=completion('{"answer": "B"}')),
               Reply(body=completion('{"answer": "Z"}')),  # outside the enum: unparseable
               Reply(body=completion('{"answer": "A"}'))]
    with ModelServerDouble(replies) as double:
        settings.MODEL_BASE_URL, settings.MODEL_NAME = double.base_url, "vllm-like"
        summary = _evaluate("--suite", "mirage", "--data", str(MIRAGE), "--limit", "2",
                            "--concurrency", "1")
    run = EvalRun.objects.get(pk=summary["id"])
    assert run.status == "complete", run.error_message
    assert run.options["structured_output"] is True
    answered = double.requests[1:]
    assert len(answered) == 4
    for body in answered:
        schema = body["response_format"]["json_schema"]["schema"]
        assert schema["properties"]["answer"]["enum"] == ["A", "B", "C", "D"]
    outcomes = sorted(run.results.values_list("outcome", flat=True))
    assert outcomes.count("unparseable") == 1
    assert run.metrics["headline"]["unparseable"] == 1
