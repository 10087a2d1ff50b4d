"""The claim checks beside the cross-encoder: mismatches, reversals and the combiner."""

from __future__ import annotations

import json

import pytest

from modelsvc.claim_checks import FEATURES, Combiner, fit_combiner, mismatches, reversals

PASSAGE = ("We followed 1200 men aged 50 to 70 for 5 years. Aspirin reduced the risk of "
           "myocardial infarction by 44% compared with placebo.")
EVIDENCE = PASSAGE


def test_a_number_the_passage_never_states_is_a_mismatch_and_years_are_not():
    changed = mismatches("Aspirin reduced the risk by 61% in 2019.", PASSAGE, EVIDENCE)
    stated = mismatches("Aspirin reduced the risk by 44%.", PASSAGE, EVIDENCE)
    assert changed["numbers_absent"] == 1
    assert stated["numbers_absent"] == 0


def test_a_population_the_passage_does_not_study_is_opposed_when_it_studies_the_opposite():
    women = mismatches("Aspirin reduced the risk of myocardial infarction in women.", PASSAGE,
                       EVIDENCE)
    men = mismatches("Aspirin reduced the risk of myocardial infarction in men.", PASSAGE,
                     EVIDENCE)
    assert (women["population_absent"], women["population_opposed"]) == (1, 1)
    assert (men["population_absent"], men["population_opposed"]) == (0, 0)


def test_a_direction_the_passage_reverses_and_a_negation_it_lacks_are_mismatches():
    increased = mismatches("Aspirin increased the risk of myocardial infarction.", PASSAGE,
                           EVIDENCE)
    negated = mismatches("Aspirin did not reduce the risk of myocardial infarction.", PASSAGE,
                         EVIDENCE)
    assert increased["direction_opposed"] == 1
    assert negated["negation_claim"] == 1 and negated["negation_gap"] == 1
    assert mismatches("Aspirin reduced the risk.", PASSAGE, EVIDENCE)["negation_gap"] == 0


def test_term_overlap_tells_an_unrelated_claim_from_a_related_one():
    related = mismatches("Aspirin reduced myocardial infarction.", PASSAGE, EVIDENCE)
    unrelated = mismatches("Statins lowered cholesterol in diabetics.", PASSAGE, EVIDENCE)
    assert related["term_overlap"] == 1.0
    assert unrelated["term_overlap"] < 0.5


def test_reversals_negate_and_swap_one_word_each():
    found = reversals("Aspirin reduced the risk in men.")
    assert "Aspirin did not reduce the risk in men." in found
    assert "Aspirin increased the risk in men." in found
    assert "Aspirin reduced the risk in women." in found
    assert all(text != "Aspirin reduced the risk in men." for text in found)
    assert len(reversals("Aspirin reduced the risk in men.", limit=2)) == 2
    assert reversals("Unrelated words here only.") == []


def _row(**values: float) -> dict[str, float]:
    return {name: values.get(name, 0.0) for name in FEATURES}


def test_the_combiner_learns_from_features_and_round_trips_through_json():
    rows, labels = [], []
    for i in range(60):
        rows.append(_row(ce_supported=0.8 + i % 3 * 0.05, term_overlap=0.9))
        labels.append("supported")
        rows.append(_row(ce_supported=0.7, numbers_absent=1, term_overlap=0.9))
        labels.append("contradicted")
        rows.append(_row(ce_not_found=0.9, term_overlap=0.1 + i % 2 * 0.05))
        labels.append("not_found")
    combiner = fit_combiner(rows, labels)
    again = Combiner.from_dict(json.loads(json.dumps(combiner.as_dict())))
    changed = again.probabilities(_row(ce_supported=0.7, numbers_absent=1, term_overlap=0.9))
    kept = again.probabilities(_row(ce_supported=0.85, term_overlap=0.9))
    unrelated = again.probabilities(_row(ce_not_found=0.9, term_overlap=0.1))
    assert max(changed, key=changed.get) == "contradicted"
    assert max(kept, key=kept.get) == "supported"
    assert max(unrelated, key=unrelated.get) == "not_found"
    assert sum(kept.values()) == pytest.approx(1.0, abs=1e-3)
    # Reversals cost 2-3x the cross-encoder's work: only a combiner fitted with them asks.
    assert not combiner.uses_reversals and "reversal_gain" not in combiner.names
    assert fit_combiner(rows, labels, reversals=True).uses_reversals


def test_the_combiner_refuses_pairs_missing_a_label():
    with pytest.raises(ValueError, match="contradicted"):
        fit_combiner([_row(ce_supported=1.0), _row(ce_not_found=1.0)],
                     ["supported", "not_found"])
