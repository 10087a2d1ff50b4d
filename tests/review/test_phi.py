"""The PHI gate on a synthetic set covering every Safe Harbor identifier type (no real data)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from review.phi import scrub

SYNTHETIC = Path(__file__).with_name("phi_synthetic.json")
STRUCTURED = {"PHONE", "FAX", "EMAIL", "SSN", "MRN", "HEALTH_PLAN", "ACCOUNT", "LICENSE",
              "VEHICLE", "DEVICE", "URL", "IP", "ID", "DATE", "AGE", "LOCATION"}


def phi_recall() -> dict[str, tuple[int, int]]:
    """Per identifier type: (found, total). Found means no part of it survives the gate."""
    cases = json.loads(SYNTHETIC.read_text())["cases"]
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for case in cases:
        scrubbed = scrub(case["text"]).text
        for kind, value in case["phi"]:
            tally[kind][1] += 1
            if value not in scrubbed:
                tally[kind][0] += 1
    return {kind: (found, total) for kind, (found, total) in tally.items()}


@pytest.fixture(scope="module")
def recall() -> dict[str, tuple[int, int]]:
    return phi_recall()


def test_the_synthetic_set_covers_every_safe_harbor_type(recall):
    assert set(recall) == STRUCTURED | {"NAME"}
    assert all(total >= 3 for _, total in recall.values())


@pytest.mark.parametrize("kind", sorted(STRUCTURED))
def test_structured_identifiers_are_all_removed(recall, kind):
    found, total = recall[kind]
    assert found == total


def test_names_are_removed_at_least_95_percent_of_the_time(recall):
    found, total = recall["NAME"]
    assert found / total >= 0.95


def test_years_ages_under_90_and_eponyms_survive():
    text = ("In 2019, a 67-year-old with Parkinson disease and Crohn's disease asked about "
            "Graves' disease.")
    assert scrub(text).text == text


def test_an_ambiguous_number_makes_the_gate_unsure():
    assert scrub("Results came back from 02139 yesterday.").is_unsure


@pytest.mark.parametrize("text, name", [
    # Surnames ending in "s": only a possessive is stripped before the lexicon look-up.
    ("cc: Hughes", "Hughes"),
    ("attending: Myers", "Myers"),
    ("referred by: Simmons.", "Simmons"),
    ("seen by: Hughes's team", "Hughes"),
    # The cue word in any case.
    ("Signed: Reyes", "Reyes"),
    ("CC: Hughes", "Hughes"),
    ("Referred By Dr Simmons", "Simmons"),
    ("PATIENT Maria Lopez was seen", "Lopez"),
])
def test_a_name_after_a_context_word_is_removed(text, name):
    assert name not in scrub(text).text
