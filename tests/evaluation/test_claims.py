"""The claims benchmark: the builder, the figures, and `evaluate --suite claims`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from evaluation.claims import build_medline_claims, build_pubmedqa_claims, by_label, claim_metrics
from evaluation.models import EvalResult, EvalRun
from modelsvc.claim_changes import LABELS, read_claims_file
from modelsvc.verifier_training import HELD_OUT, split_of
from tests.modelsvc.fakes import bag_of_words_embed

ITEMS = {
    "101": {"QUESTION": "Does aspirin prevent myocardial infarction in men?",
            "CONTEXTS": ["We randomised 412 men to aspirin or placebo.",
                         "Aspirin reduced myocardial infarction by 32% in men."],
            "LONG_ANSWER": "Aspirin reduced myocardial infarction by 32% in men older than "
                           "fifty.", "final_decision": "yes"},
    "102": {"QUESTION": "Do statins lower mortality in the elderly?",
            "CONTEXTS": ["We followed 900 elderly patients taking statins for 5 years.",
                         "Mortality was lower with statins."],
            "LONG_ANSWER": "Statins are associated with lower mortality in elderly patients.",
            "final_decision": "yes"},
    "103": {"QUESTION": "Does vitamin D prevent influenza in children?",
            "CONTEXTS": ["Children received vitamin D or placebo over one winter.",
                         "Influenza rates did not differ."],
            "LONG_ANSWER": "Vitamin D did not prevent influenza in children.",
            "final_decision": "no"},
}


@pytest.fixture
def pqal_file(tmp_path: Path) -> Path:
    path = tmp_path / "pqal_dev.json"
    path.write_text(json.dumps(ITEMS))
    return path


def test_the_builder_makes_every_label_and_kind_from_pubmedqa(pqal_file: Path) -> None:
    pairs = build_pubmedqa_claims(pqal_file, contradictions_per_sentence=4)

    assert {p.label for p in pairs} == set(LABELS)
    assert {"verbatim", "paraphrase", "direction", "negation", "population", "number",
            "other_article"} == {p.kind for p in pairs}
    supported = [p for p in pairs if p.kind == "verbatim"]
    assert {p.claim for p in supported} == {item["LONG_ANSWER"] for item in ITEMS.values()}
    assert all(p.passage == " ".join(ITEMS[p.source]["CONTEXTS"]) for p in pairs)
    assert all(p.claim_source != p.source for p in pairs if p.kind == "other_article")


def test_build_claims_writes_json_lines_the_suite_reads(pqal_file: Path, tmp_path: Path,
                                                        capsys: Any) -> None:
    out = tmp_path / "claims.jsonl"

    call_command("build_claims", "--source", "pubmedqa", "--data", str(pqal_file),
                 "--out", str(out))

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"claim", "passage", "label", "kind"} <= set(lines[0])
    assert len(read_claims_file(out)) == len(lines)
    assert f"{len(lines)} pairs written" in capsys.readouterr().out


def test_a_bad_claims_file_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"claim": "A", "passage": "B", "label": "supported"}\n'
                    '{"claim": "A", "passage": "B", "label": "maybe"}\n')

    with pytest.raises(ValueError, match="line 2: label 'maybe'"):
        read_claims_file(path)


def test_per_label_precision_recall_and_confusion() -> None:
    rows = ([("supported", "supported", "verbatim", 5.0)] * 8
            + [("supported", "not_found", "paraphrase", 5.0)] * 2
            + [("contradicted", "contradicted", "negation", 5.0)] * 9
            + [("contradicted", "supported", "direction", 5.0)]
            + [("not_found", "not_found", "other_article", 5.0)] * 5)

    metrics = claim_metrics(rows)

    supported = metrics["labels"]["supported"]
    assert supported["precision"]["value"] == 8 / 9 and supported["recall"]["value"] == 0.8
    assert 0 < supported["precision"]["ci_low"] < 8 / 9 < supported["precision"]["ci_high"] <= 1
    assert metrics["labels"]["contradicted"]["recall"]["value"] == 0.9
    assert metrics["confusion"] == {"labels": list(LABELS),
                                    "matrix": [[8, 0, 2], [1, 9, 0], [0, 0, 5]]}
    assert metrics["kinds"]["direction"]["value"] == 0.0 and metrics["items"] == 25
    figures = by_label(metrics)
    assert set(figures) == set(LABELS)
    assert figures["supported"]["precision"] == 8 / 9 and figures["supported"]["gold"] == 10


def test_a_label_never_predicted_has_no_precision() -> None:
    metrics = claim_metrics([("contradicted", "supported", "negation", 1.0)])

    assert by_label(metrics)["contradicted"] == {
        "precision": None, "recall": 0.0, "precision_ci": [0.0, 0.0],
        "recall_ci": [0.0, pytest.approx(0.7935, abs=1e-3)], "predicted": 0, "gold": 1}


@pytest.mark.django_db(transaction=True)  # the run answers in threads, each on its connection
def test_evaluate_claims_stores_a_run_and_prints_json_by_label(
        pqal_file: Path, tmp_path: Path, settings: Any, capsys: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings.VERIFIER_ENGINE = "lexical"
    monkeypatch.setattr("evaluation.claims.embed_texts", bag_of_words_embed)
    monkeypatch.setattr("evaluation.harness.get_embedder", lambda: None)
    out = tmp_path / "claims.jsonl"
    call_command("build_claims", "--source", "pubmedqa", "--data", str(pqal_file),
                 "--out", str(out))
    items = len(out.read_text().splitlines())
    capsys.readouterr()

    call_command("evaluate", "--suite", "claims", "--data", str(out), "--json")

    captured = capsys.readouterr()
    figures = json.loads(captured.out.strip().splitlines()[-1])
    assert set(figures) == set(LABELS)
    assert all({"precision", "recall"} <= set(block) for block in figures.values())
    assert figures["contradicted"]["recall"] == 0.0  # the lexical check never says so
    run = EvalRun.objects.get()
    assert (run.suite, run.status, run.model_name) == ("claims", "complete", "lexical")
    assert run.results.count() == items == run.metrics["items"]
    assert run.metrics["confusion"]["labels"] == list(LABELS)
    result = run.results.filter(subset="negation").first()
    assert result is not None and result.gold == "contradicted"
    assert result.predicted in LABELS and result.outcome == EvalResult.Outcome.WRONG
    assert "precision" in captured.err


@pytest.mark.django_db
def test_evaluate_claims_without_data_says_how_to_build_it() -> None:
    with pytest.raises(CommandError, match="build_claims"):
        call_command("evaluate", "--suite", "claims")


@pytest.mark.shared_data
def test_the_pubmedqa_file_has_enough_items_of_every_kind(shared_data_dir: Path) -> None:
    pairs = build_pubmedqa_claims(shared_data_dir / "pubmedqa" / "pqal_dev.json")

    kinds = {p.kind for p in pairs}
    assert len(pairs) >= 600
    assert {"verbatim", "paraphrase", "direction", "negation", "population", "number",
            "other_article"} == kinds


@pytest.mark.shared_data
def test_the_medline_file_holds_only_held_out_articles(shared_data_dir: Path) -> None:
    pairs = build_medline_claims(shared_data_dir, limit=30)

    assert pairs and {p.label for p in pairs} == set(LABELS)
    assert {split_of(p.source) for p in pairs} == {HELD_OUT}
    assert {split_of(p.claim_source) for p in pairs if p.claim_source} == {HELD_OUT}
