from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command

from modelsvc.models import RouterVersion, ServedModel
from modelsvc.router import route
from modelsvc.router_training import train_router
from tests.modelsvc.fakes import bag_of_words_embed

pytestmark = pytest.mark.django_db

LITERATURE_Q = "Do statins reduce mortality in elderly patients with heart failure?"
KNOWLEDGE_Q = "Which of the following nerves supplies the deltoid muscle?"


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    import json

    (tmp_path / "pubmedqa").mkdir()
    (tmp_path / "exam").mkdir()
    topics = ["statins", "aspirin", "metformin", "smoking", "exercise", "vitamin", "surgery",
              "dialysis", "vaccination", "screening", "insulin", "obesity"]
    (tmp_path / "pubmedqa" / "pqal_dev.json").write_text(json.dumps({
        str(i): {"QUESTION": f"Does {t} improve outcomes in patients with disease {i}?",
                 "final_decision": "yes"}
        for i, t in enumerate(topics)}))
    (tmp_path / "exam" / "mirage_medmcqa_mmlu.json").write_text(json.dumps({"medmcqa": {
        str(i): {"question": f"Which of the following is the nerve of the {t} structure {i}:",
                 "options": {"A": "axillary", "B": "radial"}, "answer": "A"}
        for i, t in enumerate(topics)}}))
    return tmp_path


@pytest.fixture
def trained(small_data: Path, settings: Any, tmp_path: Path) -> RouterVersion:
    settings.VAR_DIR = tmp_path / "var"
    return train_router(data_dir=small_data, embed=bag_of_words_embed, threshold=0.6)


def test_without_a_trained_router_it_takes_the_literature_path_and_says_why() -> None:
    decision = route(KNOWLEDGE_Q, bag_of_words_embed([KNOWLEDGE_Q])[0])

    assert decision.capability == "literature"
    assert decision.use_retrieval and decision.fallback
    assert decision.confidence == 0.0
    assert "No trained router" in decision.reason


def test_a_trained_router_is_stored_as_a_file_and_an_active_row(trained: RouterVersion,
                                                                settings: Any) -> None:
    assert Path(trained.path).is_file()
    assert Path(trained.path).parent == Path(settings.VAR_DIR) / "router"
    assert trained.active and trained.accuracy >= 0.8
    assert trained.test_size + trained.train_size == 24
    assert set(trained.metrics["per_class"]) == {"literature", "knowledge"}


def test_it_routes_each_kind_of_question_with_its_confidence(trained: RouterVersion,
                                                             settings: Any) -> None:
    literature = route(LITERATURE_Q, bag_of_words_embed([LITERATURE_Q])[0])
    knowledge = route(KNOWLEDGE_Q, bag_of_words_embed([KNOWLEDGE_Q])[0])

    assert (literature.capability, literature.use_retrieval) == ("literature", True)
    assert (knowledge.capability, knowledge.use_retrieval) == ("knowledge", False)
    assert knowledge.confidence >= 0.6 and not knowledge.fallback
    assert knowledge.model_name == settings.MODEL_NAME and knowledge.served_model is None
    assert knowledge.router_version == trained.version


def test_low_confidence_falls_back_to_the_safer_path(trained: RouterVersion) -> None:
    RouterVersion.objects.filter(pk=trained.pk).update(confidence_threshold=0.9999)

    decision = route(KNOWLEDGE_Q, bag_of_words_embed([KNOWLEDGE_Q])[0])

    assert decision.capability == "literature" and decision.use_retrieval
    assert decision.fallback and 0 < decision.confidence < 0.9999
    assert "below" in decision.reason


def test_it_sends_the_registry_rows_model_value(trained: RouterVersion) -> None:
    adapter = ServedModel.objects.create(
        name="anatomy-lora", base_model="meta-llama/Llama-3.1-8B-Instruct",
        served_name="anatomy-lora", adapter_path="/adapters/anatomy", capability="knowledge",
        status=ServedModel.Status.SERVING)
    ServedModel.objects.create(name="old", base_model="x", served_name="old",
                               capability="knowledge", status=ServedModel.Status.RETIRED)

    decision = route(KNOWLEDGE_Q, bag_of_words_embed([KNOWLEDGE_Q])[0])

    assert decision.served_model == adapter
    assert decision.model_name == "anatomy-lora"


def test_a_missing_embedding_or_wrong_size_falls_back(trained: RouterVersion) -> None:
    assert route(KNOWLEDGE_Q, None).fallback
    assert "dimensions" in route(KNOWLEDGE_Q, np.zeros(17, dtype=np.float32)).reason


def test_a_long_comparative_question_is_suggested_for_a_deep_consult() -> None:
    question = ("Compare the risks and benefits of apixaban versus warfarin for a patient with "
                "atrial fibrillation and kidney disease? Which is safer?")

    decision = route(question, None)

    assert decision.deep and decision.deep_confidence >= 0.5
    assert not route(LITERATURE_Q, None).deep


def test_retraining_replaces_the_active_router(trained: RouterVersion, small_data: Path) -> None:
    newer = train_router(data_dir=small_data, embed=bag_of_words_embed, seed=1)

    trained.refresh_from_db()
    assert newer.active and not trained.active
    assert RouterVersion.objects.filter(active=True).count() == 1


@pytest.mark.shared_data
def test_train_router_command_on_the_real_data(shared_data_dir: Path, settings: Any,
                                               tmp_path: Path, capsys: Any) -> None:
    settings.VAR_DIR = tmp_path

    call_command("train_router", "--limit", "40", "--data-dir", str(shared_data_dir))

    output = capsys.readouterr().out
    row = RouterVersion.objects.get(active=True)
    assert "held-out accuracy" in output
    assert row.test_size == 20 and row.train_size == 60
    assert row.accuracy >= 0.75
    assert Path(row.path).is_file()


def test_the_vllm_command_line_lists_every_adapter() -> None:
    for name, path in (("lit-lora", "/a/lit"), ("judge-lora", "/a/judge")):
        ServedModel.objects.create(name=name, base_model="meta-llama/Llama-3.1-8B-Instruct",
                                   served_name=name, adapter_path=path, capability="literature",
                                   status=ServedModel.Status.SERVING)
    from io import StringIO

    out = StringIO()
    call_command("vllm_command", stdout=out)

    line = out.getvalue().strip()
    assert line.startswith("vllm serve meta-llama/Llama-3.1-8B-Instruct")
    assert "--enable-lora" in line
    assert "judge-lora=/a/judge lit-lora=/a/lit" in line


def test_a_trained_router_keeps_its_training_split(trained: RouterVersion,
                                                   small_data: Path) -> None:
    from modelsvc.router_training import load_questions, question_fingerprint

    split = trained.training_split
    assert (len(split["train"]), len(split["held_out"])) == (trained.train_size,
                                                              trained.test_size)
    assert not set(split["train"]) & set(split["held_out"])
    everything = {question_fingerprint(text) for text in load_questions(small_data).texts}
    assert set(split["train"]) | set(split["held_out"]) == everything
    assert split["seed"] == 0 and split["test_fraction"] == 0.25


def test_the_router_suite_scores_only_questions_the_router_never_trained_on(
        trained: RouterVersion, small_data: Path) -> None:
    from evaluation.suites import SUITES, load_items
    from modelsvc.router_training import question_fingerprint

    paths = [small_data / "pubmedqa" / "pqal_dev.json",
             small_data / "exam" / "mirage_medmcqa_mmlu.json"]
    items = load_items(SUITES["router"], paths, None)

    scored = {question_fingerprint(item.question) for item in items}
    assert scored == set(trained.training_split["held_out"])
    assert len(items) == trained.test_size == 6
    assert {item.gold for item in items} == {"literature", "knowledge"}


def test_the_router_suite_refuses_a_router_without_a_stored_split(
        trained: RouterVersion, small_data: Path) -> None:
    from evaluation.suites import SUITES, EvalError, load_items

    RouterVersion.objects.filter(pk=trained.pk).update(training_split={})
    with pytest.raises(EvalError, match="Retrain it: `python manage.py train_router`"):
        load_items(SUITES["router"], [small_data / "pubmedqa" / "pqal_dev.json"], None)


def test_without_a_trained_router_the_router_suite_scores_every_question(
        small_data: Path) -> None:
    from evaluation.suites import SUITES, load_items

    items = load_items(SUITES["router"], [small_data / "pubmedqa" / "pqal_dev.json",
                                          small_data / "exam" / "mirage_medmcqa_mmlu.json"],
                       None)
    assert len(items) == 24
