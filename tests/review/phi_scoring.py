"""How the PHI gate's recall is counted on the synthetic set, for the tests and bench/phi_recall.py.

Per token: an identifier is split into its word tokens ("Maria Lopez" -> Maria, Lopez;
"212.555.0147" -> 212, 555, 0147), and a token is caught only when every character of it, at
every place the identifier occurs in the text, lies inside a span the gate replaced. An
identifier is caught only when all of its tokens are, so "Maria [NAME]" is a miss: a first name
left beside a redacted surname still identifies someone.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from review.phi import Finding, scrub

SYNTHETIC = Path(__file__).with_name("phi_synthetic.json")
# Apostrophes stay inside a token (O'Connor); hyphens, dots and spaces split (Al-Rashid).
TOKEN = re.compile(r"\w+(?:['’]\w+)*")


@dataclass
class Tally:
    identifiers: int = 0
    identifiers_caught: int = 0
    tokens: int = 0
    tokens_caught: int = 0


def _covered(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    return all(any(low <= position < high for low, high in spans)
               for position in range(start, end))


def occurrences(text: str, value: str) -> list[int]:
    """Where `value` stands in `text` as a whole (not inside a longer word)."""
    starts = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text)]
    if not starts:
        raise ValueError(f"The identifier {value!r} does not occur in its text: fix the set.")
    return starts


def tokens_caught(text: str, findings: Sequence[Finding], value: str) -> tuple[int, int]:
    """(tokens of `value` the findings redact everywhere it occurs, tokens of `value`)."""
    spans = [(finding.start, finding.end) for finding in findings
             if finding.end > finding.start]
    starts = occurrences(text, value)
    tokens = [(m.start(), m.end()) for m in TOKEN.finditer(value)]
    caught = sum(all(_covered(at + low, at + high, spans) for at in starts)
                 for low, high in tokens)
    return caught, len(tokens)


def phi_recall(path: Path = SYNTHETIC) -> dict[str, Tally]:
    """Per identifier type: identifiers and tokens, in all and caught."""
    cases = json.loads(path.read_text())["cases"]
    tally: dict[str, Tally] = defaultdict(Tally)
    for case in cases:
        findings = scrub(case["text"]).findings
        for kind, value in case["phi"]:
            caught, total = tokens_caught(case["text"], findings, value)
            entry = tally[kind]
            entry.identifiers += 1
            entry.identifiers_caught += caught == total
            entry.tokens += total
            entry.tokens_caught += caught
    return dict(tally)
