"""The claim verifier: the changes that make contradictions, the engines behind score_claims,
training and loading a cross-encoder, and what a bad configuration says."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from modelsvc.citations import ParsedClaim
from modelsvc.claim_changes import (
    CONTRADICTED,
    DIRECTION,
    NEGATION,
    NOT_FOUND,
    NUMBER,
    PARAPHRASE,
    POPULATION,
    SUPPORTED,
    ClaimPair,
    change_claim,
    pairs_for_abstract,
)
from modelsvc.client import ClientConfig, ModelClient
from modelsvc.models import ModelCall
from modelsvc.verification import ClaimSupport, judge_claims, score_claims, should_abstain
from modelsvc.verifier import (
    CrossEncoderVerifier,
    PairVerdict,
    VerifierError,
    configured_engine,
    decide,
    get_verifier,
    label_order,
    select_evidence,
)
from modelsvc.verifier_training import (
    HELD_OUT,
    TRAIN,
    TrainingOptions,
    choose_decision,
    fine_tune,
    split_of,
    write_verifier,
)
from tests.modelsvc.doubles import ModelServerDouble, Reply, completion
from tests.modelsvc.fakes import bag_of_words_embed

PASSAGE = ("We randomised 412 men older than fifty to aspirin or placebo. Aspirin reduced the "
           "risk of myocardial infarction by 32% in men. Bleeding was more common with aspirin.")
CLAIM = "Aspirin reduced the risk of myocardial infarction in men."


def _rng() -> random.Random:
    return random.Random(0)


# --- the changes ----------------------------------------------------------------------------


def test_a_direction_change_flips_the_effect() -> None:
    assert change_claim(CLAIM, DIRECTION, passage=PASSAGE, rng=_rng()) == \
        "Aspirin increased the risk of myocardial infarction in men."


def test_a_population_change_swaps_who_was_studied() -> None:
    assert change_claim(CLAIM, POPULATION, passage=PASSAGE, rng=_rng()) == \
        "Aspirin reduced the risk of myocardial infarction in women."


@pytest.mark.parametrize(("claim", "negated"), [
    ("Statins are effective in the elderly.", "Statins are not effective in the elderly."),
    ("Statins did not reduce mortality.", "Statins did reduce mortality."),
    ("There was no significant difference in survival.",
     "There was a significant difference in survival."),
    ("Screening cannot replace biopsy.", "Screening can replace biopsy."),
])
def test_a_negation_is_inserted_or_removed(claim: str, negated: str) -> None:
    assert change_claim(claim, NEGATION, passage=PASSAGE, rng=_rng()) == negated


def test_a_number_change_only_touches_a_number_the_passage_states() -> None:
    changed = change_claim("Aspirin cut infarction by 32% in 412 men.", NUMBER, passage=PASSAGE,
                           rng=_rng())

    assert changed is not None and changed != "Aspirin cut infarction by 32% in 412 men."
    assert change_claim("Aspirin cut infarction by 17% in men.", NUMBER, passage=PASSAGE,
                        rng=_rng()) is None
    assert change_claim("Benefit was seen in 2019 (p < 0.05).", NUMBER,
                        passage="In 2019 p < 0.05", rng=_rng()) is None


def test_a_paraphrase_keeps_the_meaning_words() -> None:
    reworded = change_claim("These results suggest that aspirin is associated with fewer "
                            "infarctions in men.", PARAPHRASE, passage=PASSAGE, rng=_rng())

    assert reworded is not None and reworded.startswith("Aspirin is")
    assert "men" in reworded and "fewer" in reworded


def test_an_abstract_gives_pairs_of_every_label() -> None:
    pairs = pairs_for_abstract("1", "Aspirin reduced the risk of infarction by 32% in men.",
                               PASSAGE, rng=_rng(), other_conclusion="Vitamin D did not "
                               "prevent influenza in children at all.", other_source="2",
                               contradictions_per_sentence=4)

    by_kind = {p.kind: p for p in pairs}
    assert {p.label for p in pairs} == {SUPPORTED, CONTRADICTED, NOT_FOUND}
    assert {DIRECTION, NEGATION, POPULATION, NUMBER} <= set(by_kind)
    assert by_kind["other_article"].claim_source == "2"
    assert all(p.passage == PASSAGE and p.source == "1" for p in pairs)


def test_the_split_is_fixed_by_pmid() -> None:
    splits = [split_of(str(pmid)) for pmid in range(1000, 3000)]

    assert splits == [split_of(str(pmid)) for pmid in range(1000, 3000)]
    assert 0.15 < splits.count(HELD_OUT) / len(splits) < 0.25
    assert set(splits) == {TRAIN, HELD_OUT}


# --- the engines ----------------------------------------------------------------------------


def test_evidence_is_the_sentences_closest_to_the_claim() -> None:
    long_passage = " ".join(f"Filler sentence number {i} about nothing much." for i in range(20))
    long_passage += " Aspirin reduced myocardial infarction in men."

    evidence = select_evidence(CLAIM, long_passage, max_words=12)

    assert evidence == "Aspirin reduced myocardial infarction in men."
    assert select_evidence(CLAIM, PASSAGE) == PASSAGE  # short passages are kept whole


def test_nli_label_orders_are_read_from_id2label() -> None:
    assert label_order({0: "contradiction", 1: "entailment", 2: "neutral"}) == \
        [CONTRADICTED, SUPPORTED, NOT_FOUND]
    assert label_order({"0": "ENTAILMENT", "1": "NEUTRAL", "2": "CONTRADICTION"}) == \
        [SUPPORTED, NOT_FOUND, CONTRADICTED]
    with pytest.raises(VerifierError, match="cannot be read as entailment"):
        label_order({0: "LABEL_0", 1: "LABEL_1"})


class ScriptedVerifier:
    """Says what it is told per passage text; records what it was asked."""

    name = "scripted"

    def __init__(self, verdicts: dict[str, str]) -> None:
        self.verdicts = verdicts
        self.asked: list[tuple[str, str]] = []

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[PairVerdict]:
        self.asked += list(pairs)
        out = []
        for _, passage in pairs:
            verdict = self.verdicts[passage]
            out.append(PairVerdict(verdict, {label: 0.9 if label == verdict else 0.05
                                             for label in (SUPPORTED, CONTRADICTED, NOT_FOUND)}))
        return out


def test_each_claim_gets_a_verdict_and_the_passage_that_decided_it() -> None:
    passages = {1: "supports", 2: "contradicts", 3: "silent"}
    engine = ScriptedVerifier({"supports": SUPPORTED, "contradicts": CONTRADICTED,
                               "silent": NOT_FOUND})
    claims = [ParsedClaim("A.", [2, 1]), ParsedClaim("B.", [3, 2]), ParsedClaim("C.", [3]),
              ParsedClaim("D.", []), ParsedClaim("E.", [9])]

    supports = score_claims(claims, passages, embed=bag_of_words_embed, verifier=engine)

    assert [(s.verdict, s.passage) for s in supports] == [
        (SUPPORTED, 1), (CONTRADICTED, 2), (NOT_FOUND, 3), (NOT_FOUND, None), (NOT_FOUND, None)]
    assert [s.supported for s in supports] == [True, False, False, False, False]
    assert supports[0].score == 0.9 and "[2] contradicted" in supports[0].reason
    assert len(engine.asked) == 5  # one batch: every (claim, cited passage given) pair


def test_a_contradicted_claim_withholds_the_answer_whatever_the_support_rate() -> None:
    claims = [ParsedClaim(f"Claim {i}.", [1]) for i in range(5)]
    supports = [ClaimSupport(0.9, True, 1)] * 4 + [ClaimSupport(0.0, False, 1, "", CONTRADICTED)]

    assert should_abstain(claims, supports)
    assert not should_abstain(claims, supports[:4] + [ClaimSupport(0.9, True, 1)])
    assert should_abstain(claims, supports, require_citations=False)


def test_the_old_constructor_still_gives_a_verdict() -> None:
    assert ClaimSupport(0.7, True, 1).verdict == SUPPORTED
    assert ClaimSupport(0.1, False, 1).verdict == NOT_FOUND
    with pytest.raises(ValueError):
        ClaimSupport(0.1, False, 1, "", "maybe")


def test_thresholds_chosen_on_validation_favour_catching_contradictions() -> None:
    labels = [CONTRADICTED] * 10 + [SUPPORTED] * 10
    probabilities = ([{CONTRADICTED: 0.8, SUPPORTED: 0.1, NOT_FOUND: 0.1}] * 8
                     + [{CONTRADICTED: 0.3, SUPPORTED: 0.6, NOT_FOUND: 0.1}] * 2
                     + [{CONTRADICTED: 0.05, SUPPORTED: 0.9, NOT_FOUND: 0.05}] * 10)

    decision = choose_decision(labels, probabilities)

    assert decision["contradicted_at"] == 0.3  # catches 10 of 10, not only the 8 argmax finds
    assert decide(probabilities[8], decision) == CONTRADICTED
    assert decide(probabilities[-1], decision) == SUPPORTED
    assert decide({CONTRADICTED: 0.1, SUPPORTED: 0.3, NOT_FOUND: 0.6}, decision) == NOT_FOUND
    assert decide({CONTRADICTED: 0.3, SUPPORTED: 0.6, NOT_FOUND: 0.1}, {}) == SUPPORTED


def test_thresholds_that_would_call_nothing_supported_are_not_used() -> None:
    labels = [CONTRADICTED] * 10 + [SUPPORTED] * 10
    probabilities = [{CONTRADICTED: 0.3, SUPPORTED: 0.6, NOT_FOUND: 0.1}] * 20

    decision = choose_decision(labels, probabilities)

    assert decision["rule"] == "argmax" and "contradicted_at" not in decision
    assert decide(probabilities[0], decision) == SUPPORTED


def test_without_a_trained_verifier_auto_means_lexical(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    settings.VERIFIER_ENGINE, settings.VERIFIER_MODEL = "auto", ""

    assert configured_engine() == "lexical"
    (tmp_path / "verifiers" / "20250101-000000-abc" / "model").mkdir(parents=True)
    (tmp_path / "verifiers" / "20250101-000000-abc" / "data_card.json").write_text("{}")
    assert configured_engine() == "cross-encoder"
    settings.VERIFIER_ENGINE = "lexical"
    assert configured_engine() == "lexical"


def test_a_missing_verifier_model_fails_with_what_to_set(settings: Any, tmp_path: Path) -> None:
    settings.VERIFIER_ENGINE, settings.VERIFIER_MODEL = "cross-encoder", str(tmp_path / "nope")

    with pytest.raises(VerifierError, match="is not a folder that exists"):
        get_verifier()
    settings.VAR_DIR, settings.VERIFIER_MODEL = tmp_path, ""
    with pytest.raises(VerifierError, match="train_verifier"):
        get_verifier()


def test_a_folder_that_is_no_model_fails_with_what_to_set(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")

    with pytest.raises(VerifierError, match="Cannot load the verifier model"):
        CrossEncoderVerifier(tmp_path)


@pytest.mark.django_db
def test_the_judge_engine_asks_the_served_model_for_a_verdict(settings: Any) -> None:
    claims = [ParsedClaim(CLAIM, [1])]
    with ModelServerDouble([Reply(body=completion(
            '{"verdict": "contradicted", "confidence": 0.8}'))]) as double:
        client = ModelClient(ClientConfig(base_url=double.base_url, max_retries=0))
        (support,) = judge_claims(claims, {1: PASSAGE}, client=client, model="judge",
                                  embed=bag_of_words_embed, record=True)

    schema = double.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["verdict"]["enum"] == [SUPPORTED, CONTRADICTED, NOT_FOUND]
    assert (support.verdict, support.passage, support.supported) == (CONTRADICTED, 1, False)
    assert ModelCall.objects.get().purpose == "claim_judge"


# --- a trained cross-encoder ----------------------------------------------------------------

NEGATION_PASSAGES = [
    "Metformin lowered HbA1c in adults with type 2 diabetes.",
    "Exercise improved walking distance in patients with claudication.",
    "Vaccination reduced hospital admissions in older adults.",
]


def _negation_pairs() -> list[ClaimPair]:
    pairs = []
    for passage in NEGATION_PASSAGES:
        subject, rest = passage.split(" ", 1)
        verb, tail = rest.split(" ", 1)
        pairs.append(ClaimPair(passage, passage, SUPPORTED, "verbatim", "t"))
        pairs.append(ClaimPair(f"{subject} did not {verb[:-1] if verb.endswith('d') else verb} "
                               f"{tail}", passage, CONTRADICTED, NEGATION, "t"))
        pairs.append(ClaimPair("Smoking caused lung cancer in miners.", passage, NOT_FOUND,
                               "other_article", "t"))
    return pairs


@pytest.fixture(scope="module")
def tiny_verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verifier fitted to nine pairs (a few seconds): it shows the pipeline end to end,
    not the quality of the real one (see README for that)."""
    from django.test import override_settings

    var_dir = tmp_path_factory.mktemp("var")
    pairs = _negation_pairs()
    with override_settings(VAR_DIR=var_dir):
        cross_encoder, training = fine_tune(
            pairs * 8, TrainingOptions(epochs=3, batch_size=9, learning_rate=2e-4,
                                       max_length=64))
        return write_verifier(cross_encoder, {"training": training}, train_pairs=pairs)


def test_a_trained_verifier_is_written_with_its_data_card(tiny_verifier: Path) -> None:
    card = json.loads((tiny_verifier / "data_card.json").read_text())

    assert card["version"] == tiny_verifier.name
    assert card["train"]["labels"] == {SUPPORTED: 3, CONTRADICTED: 3, NOT_FOUND: 3}
    assert len(card["train"]["pairs_sha256"]) == 64 and card["training"]["seed"] == 0
    assert (tiny_verifier / "model" / "config.json").is_file()
    assert not list(tiny_verifier.parent.glob(".*writing*"))


def test_verifier_model_pointing_at_a_folder_loads_it_and_negation_is_contradicted(
        tiny_verifier: Path, settings: Any) -> None:
    settings.VERIFIER_ENGINE, settings.VERIFIER_MODEL = "auto", str(tiny_verifier)
    passage = NEGATION_PASSAGES[0]
    claims = [ParsedClaim(passage, [1]), ParsedClaim("Metformin did not lower HbA1c in adults "
                                                     "with type 2 diabetes.", [1])]

    supports = score_claims(claims, {1: passage}, embed=bag_of_words_embed)

    assert configured_engine() == "cross-encoder"
    assert get_verifier().name == tiny_verifier.name
    assert [s.verdict for s in supports] == [SUPPORTED, CONTRADICTED]
    assert supports[1].passage == 1 and should_abstain(claims, supports)


ISSUE_PASSAGE = ("In this randomised trial of 22,071 male physicians, aspirin reduced the risk "
                 "of myocardial infarction in men by 44% compared with placebo.")
# Measured recall on the claims benchmark (README), cross-encoder with its claim checks:
# negation ~0.74-0.90, direction ~0.62-0.64, population ~0.61-0.71; the two weaker kinds may
# slip through (verifier 20261202-140713-0a50fdd9 catches all three here).
WEAK_KIND = pytest.mark.xfail(reason="the shipped verifier catches about two thirds of direction "
                              "and population changes (README, Claim verification)",
                              strict=False)


@pytest.mark.slow
@pytest.mark.parametrize("claim", [
    "Aspirin did not reduce the risk of myocardial infarction in men.",
    pytest.param("Aspirin increased the risk of myocardial infarction in men.", marks=WEAK_KIND),
    pytest.param("Aspirin reduced the risk of myocardial infarction in women.", marks=WEAK_KIND),
])
def test_the_real_verifier_on_the_issues_contradictions(claim: str, settings: Any) -> None:
    """Needs a verifier trained with `manage.py train_verifier` (VAR_DIR or VERIFIER_MODEL)."""
    settings.VERIFIER_ENGINE = "cross-encoder"
    try:
        engine = get_verifier()
    except VerifierError as error:
        pytest.skip(str(error))

    (verdict,) = engine.judge([(claim, ISSUE_PASSAGE)])

    assert verdict.verdict == CONTRADICTED


NUMBER_PASSAGES = [
    "Statins lowered LDL cholesterol by 30% in 1200 adults with diabetes.",
    "Exercise training improved walking distance by 45% in 300 patients with claudication.",
    "Vaccination reduced hospital admissions by 25% in 800 older adults.",
    "Aspirin reduced myocardial infarction by 44% in 2200 male physicians.",
    "Dapagliflozin lowered heart failure admissions by 35% in 4700 patients.",
]


def _number_pairs() -> list[ClaimPair]:
    pairs = []
    for passage in NUMBER_PASSAGES:
        number = passage.split("by ")[1].split("%")[0]
        pairs.append(ClaimPair(passage, passage, SUPPORTED, "verbatim", "t"))
        pairs.append(ClaimPair(passage.replace(f"{number}%", f"{int(number) + 17}%"), passage,
                               CONTRADICTED, NUMBER, "t"))
        pairs.append(ClaimPair("Smoking caused lung cancer in miners.", passage, NOT_FOUND,
                               "other_article", "t"))
    return pairs


def test_a_combiner_in_the_data_card_decides_with_the_claim_checks(
        tiny_verifier: Path, tmp_path: Path) -> None:
    """train_verifier fits the combiner on pairs the cross-encoder never saw; judge() then
    sees what the cross-encoder alone misses, such as a number the passage never states."""
    import shutil

    from modelsvc.verifier_training import fit_combiner

    folder = tmp_path / tiny_verifier.name
    shutil.copytree(tiny_verifier, folder)
    card = fit_combiner(folder, _number_pairs() * 4)
    assert card["combiner"]["fitted_on"]["pairs"] == 60
    assert "numbers_absent" in card["combiner"]["features"]

    verifier = CrossEncoderVerifier(folder)
    passage = "Colchicine lowered cardiovascular events by 23% in 5500 patients."
    changed, kept = verifier.judge([
        ("Colchicine lowered cardiovascular events by 41% in 5500 patients.", passage),
        (passage, passage)])
    assert verifier.combiner is not None
    assert changed.verdict == CONTRADICTED
    assert kept.verdict == SUPPORTED
    # Without the combiner the same cross-encoder is not asked about reversals at all.
    assert CrossEncoderVerifier(tiny_verifier).combiner is None


def test_each_backend_gives_the_float32_probabilities(tiny_verifier: Path) -> None:
    """openvino (bfloat16 where the CPU has it) and torch-int8 run the same cross-encoder:
    their probabilities stay near float32's and every verdict is the same."""
    pytest.importorskip("openvino", reason="openvino (requirements.txt) is not installed")
    pairs = [(pair.claim, pair.passage) for pair in _negation_pairs()]
    float32 = CrossEncoderVerifier(tiny_verifier, backend="torch")
    assert float32.backend == "torch"
    reference = float32.measure(pairs, reversed_claims=False)
    for backend, tolerance in (("openvino", 0.02), ("torch-int8", 0.05)):
        verifier = CrossEncoderVerifier(tiny_verifier, backend=backend)
        assert verifier.backend == backend
        measured = verifier.measure(pairs, reversed_claims=False)
        for got, want in zip(measured, reference, strict=True):
            assert got.probabilities.keys() == want.probabilities.keys()
            assert max(abs(got.probabilities[label] - want.probabilities[label])
                       for label in want.probabilities) <= tolerance, (backend, got, want)
        assert [v.verdict for v in verifier.judge(pairs)] == \
            [v.verdict for v in float32.judge(pairs)]


def test_openvino_missing_falls_back_to_torch_int8_with_a_warning(
        tiny_verifier: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with caplog.at_level(logging.WARNING, logger="modelsvc.verifier"):
        verifier = CrossEncoderVerifier(tiny_verifier, backend="openvino")
    assert verifier.backend == "torch-int8" and verifier.openvino is None
    assert any("VERIFIER_BACKEND=openvino is unavailable" in r.getMessage()
               for r in caplog.records)
    assert len(verifier.judge([(NEGATION_PASSAGES[0], NEGATION_PASSAGES[0])])) == 1
