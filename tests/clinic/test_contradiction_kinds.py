"""Each kind of contradiction (negation, direction, population, number) caught end to end: the
model server double writes an answer whose second claim changes what passage [1] says; the
real claim check (a cross-encoder with its combiner of claim checks, loaded from a verifier
folder as `train_verifier` writes it) marks the claim contradicted and the quick answer is
withheld, on the page and in the API.

The cross-encoder here is the packaged MiniLM with an untrained head, so the verdicts come from
the claim checks and a combiner fitted on a few generated pairs: the test shows the wiring
from the page to the engine, not the accuracy of the real verifier (README, tests/modelsvc).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from clinic.models import Consultation
from modelsvc.claim_changes import (
    CONTRADICTED,
    CONTRADICTION_KINDS,
    NOT_FOUND,
    SUPPORTED,
    ClaimPair,
    change_claim,
)
from tests.web.streams import parse_events, read_stream

QUESTION = "Does low-dose aspirin prevent recurrent stroke?"
SUPPORTED_CLAIM = "Low-dose aspirin prevents recurrent ischemic stroke [1]."
METFORMIN = "Is metformin safe in chronic kidney disease stage 3?"
# kind: (question, a claim passage [1] supports, the same claim changed so [1] refutes it)
CHANGED = {
    "negation": (QUESTION, SUPPORTED_CLAIM,
                 "Low-dose aspirin does not prevent recurrent ischemic stroke [1]."),
    "direction": (QUESTION, SUPPORTED_CLAIM, "Aspirin decreased major bleeding modestly [1]."),
    "population": (METFORMIN, "Metformin at adjusted doses appears safe in CKD stage 3 [1].",
                   "Metformin at adjusted doses appears safe in children with CKD stage 3 [1]."),
    "number": (QUESTION, SUPPORTED_CLAIM, "Aspirin reduced recurrent ischemic stroke by 41% [1]."),
}
# Sentences to fit the combiner on: none of them is in the synthetic corpus.
FIT_SENTENCES = [
    "Statins lowered LDL cholesterol by 30% in adults with diabetes.",
    "Exercise training improved walking distance by 45% in older patients.",
    "Vaccination reduced hospital admissions by 25% in elderly men.",
    "Dapagliflozin lowered heart failure admissions by 35% in adults.",
    "Early mobilisation shortened hospital stay by 12% in older women.",
    "Metformin was associated with lower mortality by 18% in obese adults.",
    "Smoking cessation increased lung function by 9% in male smokers.",
    "Iron supplements improved haemoglobin by 14% in pregnant women.",
]


@pytest.fixture(scope="module")
def combined_verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verifier folder: packaged MiniLM with a fresh 3-label head, its combiner fitted on
    generated pairs of every kind of change."""
    from django.test import override_settings
    from sentence_transformers import CrossEncoder

    from modelsvc.verifier_training import _packaged_minilm, fit_combiner, write_verifier

    rng = random.Random(0)
    pairs: list[ClaimPair] = []
    for position, sentence in enumerate(FIT_SENTENCES):
        passage = f"We followed patients for two years. {sentence}"
        pairs.append(ClaimPair(sentence, passage, SUPPORTED, "verbatim", str(position)))
        for kind in CONTRADICTION_KINDS:
            changed = change_claim(sentence, kind, passage=passage, rng=rng)
            if changed:
                pairs.append(ClaimPair(changed, passage, CONTRADICTED, kind, str(position)))
        other = FIT_SENTENCES[(position + 3) % len(FIT_SENTENCES)]
        pairs.append(ClaimPair(other.replace("by", "in a trial, by"), passage, NOT_FOUND,
                               "other_article", str(position)))
    assert {p.kind for p in pairs} >= set(CONTRADICTION_KINDS)
    with override_settings(VAR_DIR=tmp_path_factory.mktemp("var")):
        cross_encoder = CrossEncoder(_packaged_minilm(), num_labels=3, max_length=128,
                                     device="cpu")
        model = cross_encoder[0].auto_model
        model.config.id2label = {0: SUPPORTED, 1: CONTRADICTED, 2: NOT_FOUND}
        model.config.label2id = {SUPPORTED: 0, CONTRADICTED: 1, NOT_FOUND: 2}
        folder = write_verifier(cross_encoder, {"training": {"seed": 0}}, train_pairs=pairs)
        fit_combiner(folder, pairs * 3)
    return folder


@pytest.fixture(autouse=True)
def _combined_engine(settings: Any, combined_verifier: Path) -> None:
    settings.VERIFIER_ENGINE, settings.VERIFIER_MODEL = "cross-encoder", str(combined_verifier)


def _ask(client: Client, clinician: User, question: str = QUESTION
         ) -> tuple[Consultation, str]:
    client.force_login(clinician)
    response = client.post("/", {"question": question, "quick": "1"})
    assert response.status_code == 302, response.content
    consultation = Consultation.objects.latest("id")
    body = read_stream(client.get(f"/consultations/{consultation.pk}/events"))
    consultation.refresh_from_db()
    return consultation, body


@pytest.mark.parametrize("kind", sorted(CHANGED))
def test_each_kind_of_contradiction_is_caught_and_withholds_the_answer(
        kind: str, client: Client, clinician: User, tiny_index: Path,
        answer_double: Any) -> None:
    question, supported, changed = CHANGED[kind]
    answer_double(supported, changed)
    consultation, body = _ask(client, clinician, question)

    verdicts = list(consultation.claims.order_by("position").values_list("verdict", flat=True))
    assert verdicts == [SUPPORTED, CONTRADICTED], (kind, verdicts)
    assert consultation.abstained and consultation.withheld_reason == "contradicted"
    final = json.loads(parse_events(body)[-1][1])
    assert final["withheld"]["reason"] == "contradicted"
    assert final["withheld"]["contradicting_passages"] == [1]
    shown = changed.split(" [")[0]
    page = client.get(f"/consultations/{consultation.pk}/").content.decode()
    assert shown not in page and shown not in body
    assert "contradict" in page.lower()


def test_the_unchanged_claim_is_supported_by_the_same_engine(
        client: Client, clinician: User, tiny_index: Path, answer_double: Any) -> None:
    answer_double(SUPPORTED_CLAIM)
    consultation, _ = _ask(client, clinician)
    assert list(consultation.claims.values_list("verdict", flat=True)) == [SUPPORTED]
    assert not consultation.abstained
