"""What a small cross-encoder misses about a claim, measured against its evidence, and how
its verdict is combined with them.

A 22M-parameter cross-encoder judges most inserted negations but few reversed directions,
changed populations or changed numbers (README, claim verification). Three kinds of evidence
help it, each cheap on a CPU:

- mismatches: a number the claim states that the passage never does; a population word
  (men, children, smokers...) the passage does not use, above all when it uses the opposite;
  a direction word (increased, lower, safe...) the passage does not use while it uses the
  opposite; more negation in the claim than in the evidence, or less;
- reversals: the claim said the other way round (negation inserted or removed, one direction
  or population word swapped) and judged by the same cross-encoder: when a reversal fits the
  evidence better than the claim does, the claim is probably the reversed one;
- the cross-encoder's own probabilities.

A multinomial logistic regression over these features (`Combiner`), fitted by
`train_verifier` on train-split articles the cross-encoder never saw, gives the verdict
probabilities; its weights are stored as JSON in the verifier's data card (no pickles).

The word lists are those `claim_changes` uses to make contradicted claims, so on benchmarks
made by those changes the mismatch features are an upper bound on what they catch in claims
worded otherwise: README reports the cross-encoder alone beside the combination.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelsvc.claim_changes import (
    DIRECTION_SWAPS,
    LABELS,
    POPULATION_SWAPS,
    SUPPORTED,
    negate,
)

MAX_REVERSALS = 3

_WORD = re.compile(r"[a-z][a-z-]*")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.]*\d)")
_NEGATION_CUES = frozenset(
    "not no never without cannot neither nor failed unlikely none lack lacked lacking absence "
    "absent".split())
# Phrases of the swap lists ("with diabetes") are matched as phrases, words as words.
_SWAP_PATTERNS = {
    name: re.compile(r"\b(" + "|".join(re.escape(key) for key in sorted(
        swaps, key=len, reverse=True)) + r")\b", re.IGNORECASE)
    for name, swaps in (("direction", DIRECTION_SWAPS), ("population", POPULATION_SWAPS))}
_SWAPS = {"direction": DIRECTION_SWAPS, "population": POPULATION_SWAPS}


def _opposites(swaps: dict[str, str]) -> dict[str, frozenset[str]]:
    """Every opposite of each word ("increased": decreased, reduced, ...), both ways."""
    found: dict[str, set[str]] = {}
    for word, opposite in swaps.items():
        found.setdefault(word, set()).add(opposite)
        found.setdefault(opposite, set()).add(word)
    return {word: frozenset(opposites) for word, opposites in found.items()}


_OPPOSITES = {kind: _opposites(swaps) for kind, swaps in _SWAPS.items()}

REVERSAL_FEATURES = ("reversal_supported_max", "reversal_gain", "has_reversal")
FEATURES = (
    "ce_supported", "ce_contradicted", "ce_not_found", *REVERSAL_FEATURES,
    "numbers_absent", "population_absent", "population_opposed",
    "direction_absent", "direction_opposed",
    "negation_claim", "negation_evidence", "negation_gap", "term_overlap",
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _negations(text: str) -> int:
    lowered = text.lower()
    return sum(1 for word in _words(lowered) if word in _NEGATION_CUES) + lowered.count("n't")


def _is_year(number: str) -> bool:
    return len(number) == 4 and number.isdigit() and 1900 <= int(number) <= 2030


@functools.lru_cache(maxsize=1024)
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """The phrase as a whole word (compiled once per phrase; the phrases are the swap lists)."""
    return re.compile(r"\b" + re.escape(phrase) + r"\b")


def _swap_words(claim: str, kind: str) -> list[str]:
    return [match.group(0).lower() for match in _SWAP_PATTERNS[kind].finditer(claim)]


def mismatches(claim: str, passage: str, evidence: str) -> dict[str, float]:
    """Counts of what the claim says that the passage does not (see the module docstring)."""
    passage_lower = " ".join(passage.lower().split())
    passage_numbers = set(_NUMBER.findall(passage))
    features: dict[str, float] = {
        "numbers_absent": float(min(3, sum(
            1 for number in set(_NUMBER.findall(claim))
            if number not in passage_numbers and not _is_year(number))))}

    def used(phrase: str) -> bool:
        return _phrase_pattern(phrase).search(passage_lower) is not None

    for kind in ("population", "direction"):
        absent = opposed = 0
        for phrase in _swap_words(claim, kind):
            if used(phrase):
                continue
            absent += 1
            opposed += any(used(opposite) for opposite in _OPPOSITES[kind][phrase])
        features[f"{kind}_absent"] = float(min(absent, 3))
        features[f"{kind}_opposed"] = float(min(opposed, 3))
    claim_negations, evidence_negations = _negations(claim), _negations(evidence)
    features["negation_claim"] = float(min(claim_negations, 3))
    features["negation_evidence"] = float(min(evidence_negations, 3))
    features["negation_gap"] = float(max(-3, min(3, claim_negations - evidence_negations)))
    content = {word[:6] for word in _words(claim) if len(word) > 3}
    passage_stems = {word[:6] for word in _words(passage)}
    features["term_overlap"] = len(content & passage_stems) / max(len(content), 1)
    return features


def reversals(claim: str, *, limit: int = MAX_REVERSALS) -> list[str]:
    """The claim said the other way round: negation inserted or removed, then each direction
    word and each population word swapped for its opposite (one change each)."""
    found: list[str] = []
    negated = negate(claim)
    if negated and negated != claim:
        found.append(negated)
    for kind in ("direction", "population"):
        for match in _SWAP_PATTERNS[kind].finditer(claim):
            word = match.group(0)
            opposite = _SWAPS[kind][word.lower()]
            if word[:1].isupper():
                opposite = opposite[:1].upper() + opposite[1:]
            found.append(claim[:match.start()] + opposite + claim[match.end():])
    unique = list(dict.fromkeys(text for text in found if text != claim))
    return unique[:limit]


def features(probabilities: dict[str, float], reversal_probabilities: Sequence[dict[str, float]],
             claim: str, passage: str, evidence: str) -> dict[str, float]:
    """The combiner's inputs for one (claim, passage) pair."""
    supported = probabilities.get(SUPPORTED, 0.0)
    best_reversal = max((p.get(SUPPORTED, 0.0) for p in reversal_probabilities), default=0.0)
    return {
        "ce_supported": supported,
        "ce_contradicted": probabilities.get("contradicted", 0.0),
        "ce_not_found": probabilities.get("not_found", 0.0),
        "reversal_supported_max": best_reversal,
        "reversal_gain": best_reversal - supported if reversal_probabilities else 0.0,
        "has_reversal": 1.0 if reversal_probabilities else 0.0,
        **mismatches(claim, passage, evidence),
    }


@dataclass(frozen=True)
class Combiner:
    """Multinomial logistic regression over standardised FEATURES -> LABELS probabilities."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]  # one row per label
    intercept: tuple[float, ...]
    labels: tuple[str, ...] = LABELS

    @property
    def uses_reversals(self) -> bool:
        """Whether the claims said the other way round must be judged too (2-3x the
        cross-encoder's work per claim)."""
        return any(name in REVERSAL_FEATURES for name in self.names)

    def probabilities(self, values: dict[str, float]) -> dict[str, float]:
        x = [(values.get(name, 0.0) - m) / s
             for name, m, s in zip(self.names, self.mean, self.scale, strict=True)]
        logits = [b + sum(w * v for w, v in zip(row, x, strict=True))
                  for row, b in zip(self.coef, self.intercept, strict=True)]
        top = max(logits)
        exps = [math.exp(z - top) for z in logits]
        total = sum(exps)
        return {label: round(e / total, 4) for label, e in zip(self.labels, exps, strict=True)}

    def as_dict(self) -> dict[str, Any]:
        return {"features": list(self.names), "mean": list(self.mean),
                "scale": list(self.scale), "coef": [list(row) for row in self.coef],
                "intercept": list(self.intercept), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Combiner:
        return cls(names=tuple(data["features"]), mean=tuple(map(float, data["mean"])),
                   scale=tuple(map(float, data["scale"])),
                   coef=tuple(tuple(map(float, row)) for row in data["coef"]),
                   intercept=tuple(map(float, data["intercept"])),
                   labels=tuple(data.get("labels") or LABELS))


def fit_combiner(rows: Sequence[dict[str, float]], labels: Sequence[str], *,
                 reversals: bool = False, regularisation: float = 1.0) -> Combiner:
    """Fit the combiner on feature rows of labelled pairs (scikit-learn, multinomial); with
    `reversals`, over the reversal features too."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    names = tuple(name for name in FEATURES if reversals or name not in REVERSAL_FEATURES)
    matrix = np.array([[row.get(name, 0.0) for name in names] for row in rows], dtype=float)
    mean = matrix.mean(axis=0)
    scale = matrix.std(axis=0)
    scale[scale < 1e-9] = 1.0
    targets = np.array([LABELS.index(label) for label in labels])
    missing = set(range(len(LABELS))) - set(targets.tolist())
    if missing:
        raise ValueError("The combiner needs pairs of every label; none are "
                         f"{', '.join(LABELS[i] for i in sorted(missing))}.")
    model = LogisticRegression(C=regularisation, max_iter=5000)
    model.fit((matrix - mean) / scale, targets)
    order = [list(model.classes_).index(i) for i in range(len(LABELS))]  # rows in LABELS order
    return Combiner(names=names, mean=tuple(float(v) for v in mean),
                    scale=tuple(float(v) for v in scale),
                    coef=tuple(tuple(float(w) for w in model.coef_[i]) for i in order),
                    intercept=tuple(float(model.intercept_[i]) for i in order))
