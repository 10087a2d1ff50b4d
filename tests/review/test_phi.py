"""The PHI gate on a synthetic set covering every Safe Harbor identifier type (no real data)."""

from __future__ import annotations

import pytest

from review.phi import Finding, scrub
from tests.review.phi_scoring import Tally, phi_recall, tokens_caught

STRUCTURED = {"PHONE", "FAX", "EMAIL", "SSN", "MRN", "HEALTH_PLAN", "ACCOUNT", "LICENSE",
              "VEHICLE", "DEVICE", "URL", "IP", "ID", "DATE", "AGE", "LOCATION"}


@pytest.fixture(scope="module")
def recall() -> dict[str, Tally]:
    return phi_recall()


def test_the_synthetic_set_covers_every_safe_harbor_type(recall):
    assert set(recall) == STRUCTURED | {"NAME"}
    assert all(tally.identifiers >= 3 for tally in recall.values())


@pytest.mark.parametrize("kind", sorted(STRUCTURED))
def test_structured_identifiers_are_all_removed(recall, kind):
    tally = recall[kind]
    assert tally.tokens_caught == tally.tokens
    assert tally.identifiers_caught == tally.identifiers


def test_names_are_removed_at_least_95_percent_of_the_time(recall):
    tally = recall["NAME"]
    assert tally.identifiers_caught / tally.identifiers >= 0.95


def test_a_half_redacted_name_counts_as_a_miss():
    text = "Patient Maria Lopez was seen."
    surname_only = [Finding("NAME", text.index("Lopez"), text.index("Lopez") + 5, "test")]
    assert tokens_caught(text, surname_only, "Maria Lopez") == (1, 2)
    whole = [Finding("NAME", text.index("Maria"), text.index("Lopez") + 5, "test")]
    assert tokens_caught(text, whole, "Maria Lopez") == (2, 2)


def test_a_token_cut_in_half_is_not_caught():
    text = "Call 617-555-0199 today."
    start = text.index("0199")
    assert tokens_caught(text, [Finding("PHONE", start + 2, start + 4, "test")],
                         "617-555-0199") == (0, 3)


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
