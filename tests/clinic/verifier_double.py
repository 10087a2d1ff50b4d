"""A verification engine double at its boundary (`score_claims`), for arranged answers.

The real engines are tested in tests/modelsvc; here a claim's wording decides its verdict, so a
test can say which sentence a passage contradicts: "increases" or "does not" -> contradicted,
"cures" -> not found, anything else citing a given passage -> supported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from modelsvc.citations import ParsedClaim
from modelsvc.verification import ClaimSupport

CONTRADICTING = ("increases", "does not")
NOT_FOUND_WORDS = ("cures",)


def score_claims_double(claims: Sequence[ParsedClaim], passages: dict[int, str], *,
                        embed: Any = None, verifier: Any = None) -> list[ClaimSupport]:
    supports = []
    for claim in claims:
        given = [n for n in claim.citations if n in passages]
        if not given:
            supports.append(ClaimSupport(0.0, False, None, "no passage given", "not_found"))
        elif any(word in claim.text.lower() for word in CONTRADICTING):
            supports.append(ClaimSupport(0.0, False, given[0], "double", "contradicted"))
        elif any(word in claim.text.lower() for word in NOT_FOUND_WORDS):
            supports.append(ClaimSupport(0.2, False, given[0], "double", "not_found"))
        else:
            supports.append(ClaimSupport(0.9, True, given[0], "double", "supported"))
    return supports


@pytest.fixture
def verifier_double(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("clinic.answering.score_claims", score_claims_double)
    yield
