"""Recall of the PHI gate per identifier type on the synthetic set in tests/review/
(phi_synthetic.json), written for the test: no real patient data.

    VAR_DIR=/tmp/var-review .venv/bin/python bench/phi_recall.py

Counted per token (tests/review/phi_scoring.py): token recall is the share of identifier tokens
redacted; identifier recall the share of identifiers with every token redacted, so a
half-redacted name is a miss. Both with 95% Wilson intervals. Also prints how many of the
identifier-free questions were changed or held.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from evaluation.metrics import wilson_interval  # noqa: E402
from review.phi import scrub  # noqa: E402
from tests.review.phi_scoring import SYNTHETIC, Tally, phi_recall  # noqa: E402


def _figure(caught: int, total: int) -> str:
    low, high = wilson_interval(caught, total)
    return f"{caught:>4}/{total:<4} {caught / total:>7.1%} ({low:.1%}-{high:.1%})"


def main() -> None:
    started = time.monotonic()
    recall = phi_recall()
    print(f"{'type':<12} {'identifiers caught (95% CI)':<33} {'tokens caught (95% CI)'}")
    everything = Tally()
    for kind in sorted(recall):
        tally = recall[kind]
        print(f"{kind:<12} {_figure(tally.identifiers_caught, tally.identifiers):<33} "
              f"{_figure(tally.tokens_caught, tally.tokens)}")
        everything.identifiers += tally.identifiers
        everything.identifiers_caught += tally.identifiers_caught
        everything.tokens += tally.tokens
        everything.tokens_caught += tally.tokens_caught
    print(f"{'all':<12} {_figure(everything.identifiers_caught, everything.identifiers):<33} "
          f"{_figure(everything.tokens_caught, everything.tokens)}")
    clean = json.loads(SYNTHETIC.read_text())["clean"]
    changed = sum(scrub(text).text != text for text in clean)
    held = sum(scrub(text).is_unsure for text in clean)
    print(f"identifier-free questions: {len(clean)}, changed {changed}, held {held}")
    print(f"elapsed {time.monotonic() - started:.1f} s (includes loading Presidio)")


if __name__ == "__main__":
    main()
