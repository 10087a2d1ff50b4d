"""The figures against values computed by hand (and Newcombe's published example)."""

from __future__ import annotations

import pytest

from evaluation.extraction import parse_choice
from evaluation.metrics import (
    Row,
    difference_interval,
    label_metrics,
    percentile,
    recall_at_k,
    run_metrics,
    wilson_interval,
)


def test_wilson_interval_matches_the_hand_computed_one() -> None:
    # p = .8, n = 10: centre (.8 + 1.96²/20) / (1 + 1.96²/10) = .7167, half-width .2266
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 0.0)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_newcombe_difference_matches_the_published_example() -> None:
    # Newcombe (1998), Stat Med 17:873, method 10: 56/70 - 48/80 = .2000 (.0524 to .3339)
    difference, low, high = difference_interval(56, 70, 48, 80)
    assert difference == pytest.approx(0.2)
    assert low == pytest.approx(0.0524, abs=1e-4)
    assert high == pytest.approx(0.3339, abs=1e-4)


def test_recall_at_k_and_percentiles() -> None:
    ranks = [1, 3, None, 6]
    assert recall_at_k(ranks, 1) == 0.25
    assert recall_at_k(ranks, 5) == 0.5
    assert recall_at_k(ranks, 10) == 0.75
    assert percentile([100, 200, 300, 400], 50) == 250
    assert percentile([100, 200, 300, 400], 95) == pytest.approx(385)


FIXTURE = [
    Row("q1", "correct", subset="yes", gold_rank=1, has_gold_pmid=True, gold_cited=True,
        cited_passages=2, supporting_citations=2, claims=2, supported_claims=2,
        prompt_tokens=100, completion_tokens=10, cost=0.002, latency_ms=100),
    Row("q2", "correct", subset="no", gold_rank=3, has_gold_pmid=True, gold_cited=False,
        cited_passages=1, supporting_citations=0, claims=1, supported_claims=0,
        abstained=True, prompt_tokens=200, completion_tokens=20, cost=0.004, latency_ms=200),
    Row("q3", "wrong", subset="yes", gold_rank=None, has_gold_pmid=True, gold_cited=False,
        cited_passages=1, supporting_citations=1, claims=1, supported_claims=1,
        prompt_tokens=300, completion_tokens=30, cost=0.006, latency_ms=300),
    Row("q4", "unparseable", subset="yes", gold_rank=6, has_gold_pmid=True, gold_cited=False,
        prompt_tokens=400, completion_tokens=40, cost=0.008, latency_ms=400),
]


def test_run_metrics_on_a_small_fixture() -> None:
    metrics = run_metrics(FIXTURE)["headline"]
    # Unparseable is counted on its own: 2 correct of 3 readable, 2 of 4 overall.
    assert (metrics["correct"], metrics["wrong"], metrics["unparseable"]) == (2, 1, 1)
    assert metrics["accuracy"]["value"] == pytest.approx(2 / 3)
    assert metrics["accuracy"]["n"] == 3
    assert metrics["accuracy_all"]["value"] == 0.5
    assert metrics["accuracy"]["ci_low"] == pytest.approx(wilson_interval(2, 3)[0])
    assert metrics["subsets"]["yes"]["accuracy"]["value"] == 0.5  # q1 right, q3 wrong
    assert metrics["subsets"]["yes"]["unparseable"] == 1
    assert metrics["recall"] == {"@1": 0.25, "@3": 0.5, "@5": 0.5, "@10": 0.75}
    assert metrics["gold_cited"]["value"] == 0.25
    assert metrics["citation_precision"]["value"] == 0.75  # 3 supporting of 4 citations
    assert metrics["claim_support_rate"]["value"] == 0.75  # 3 supported of 4 claims
    assert metrics["abstention_rate"]["value"] == 0.25
    # Answering (not abstained, readable): q1 right, q3 wrong.
    assert metrics["accuracy_when_answering"]["value"] == 0.5
    assert metrics["tokens_per_question"] == {"prompt": 250, "completion": 25}
    assert metrics["cost_per_question"] == pytest.approx(0.005)
    assert metrics["latency_ms"] == {"p50": 250, "p95": pytest.approx(385)}


def test_per_label_recall_shows_a_model_that_says_one_label_to_everything() -> None:
    # Gold: 3 yes, 2 no, 1 maybe. The model says "yes" to all it answers; one is unreadable.
    gold = ["yes", "yes", "yes", "no", "no", "maybe"]
    said = ["yes", "yes", "", "yes", "yes", "yes"]
    rows = [Row(f"q{n}", "unparseable" if not p else "correct" if p == g else "wrong",
                gold=g, predicted=p) for n, (g, p) in enumerate(zip(gold, said, strict=True))]
    labels = label_metrics(rows)
    assert labels is not None
    assert labels["gold"] == {"maybe": 1, "no": 2, "yes": 3}
    assert {k: v["value"] for k, v in labels["recall"].items()} == {
        "maybe": 0.0, "no": 0.0, "yes": pytest.approx(2 / 3)}
    assert labels["balanced_accuracy"] == pytest.approx(2 / 9)
    assert labels["predicted"] == {"yes": 5}
    assert labels["top_prediction"] == {"label": "yes", "share": 1.0}
    assert labels["majority"]["label"] == "yes"
    assert labels["majority"]["value"] == 0.5  # 3 of 6
    assert run_metrics(rows)["headline"]["labels"] == labels


def test_free_text_and_single_label_gold_have_no_label_figures() -> None:
    assert label_metrics([Row("a", "correct", gold="yes", predicted="yes")]) is None
    assert label_metrics([Row(str(n), "wrong", gold=f"answer {n}") for n in range(11)]) is None
    assert label_metrics([Row("a", "correct", gold="yes"), Row("b", "wrong")]) is None


def test_retrieval_gain_per_subset() -> None:
    rows = [Row("a", "correct", "retrieval", "mmlu"), Row("a", "wrong", "no_retrieval", "mmlu"),
            Row("b", "correct", "retrieval", "mmlu"), Row("b", "correct", "no_retrieval", "mmlu")]
    gain = run_metrics(rows)["retrieval_gain"]
    assert gain["overall"]["difference"] == pytest.approx(0.5)
    assert gain["subsets"]["mmlu"]["difference"] == pytest.approx(0.5)


@pytest.mark.parametrize(("text", "expected"), [
    ("B", "B"), ("(C)", "C"), ("Answer: D", "D"), ("The answer is B.", "B"),
    ("**Answer:** C", "C"), ("B. Because aspirin...", "B"), ('{"answer": "A"}', "A"),
    ("a patient with a fever", None), ("the answer is A, or the answer is B", None),
    ("I am not sure.", None), ("Aspirin", "A"),
])
def test_multiple_choice_answers_are_read_strictly(text: str, expected: str | None) -> None:
    assert parse_choice(text, ["A", "B", "C", "D"],
                        option_texts={"A": "Aspirin", "B": "Placebo"}) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes.", "yes"), ("No, it does not.", "no"), ("Aspirin helps [1].\nAnswer: maybe", "maybe"),
    ("yes and no", None), ("It is unclear.", None),
])
def test_yes_no_maybe_answers_are_read_strictly(text: str, expected: str | None) -> None:
    assert parse_choice(text, ["yes", "no", "maybe"]) == expected
