"""Recall of the PHI gate per identifier type on the synthetic set in tests/review/
(phi_synthetic.json), written for the test: no real patient data.

    VAR_DIR=/tmp/var-review .venv/bin/python bench/phi_recall.py

Also prints how many of the identifier-free questions were changed or held.
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

from review.phi import scrub  # noqa: E402
from tests.review.test_phi import SYNTHETIC, phi_recall  # noqa: E402


def main() -> None:
    started = time.monotonic()
    recall = phi_recall()
    print(f"{'type':<12} {'found':>5} {'total':>5} {'recall':>7}")
    for kind in sorted(recall):
        found, total = recall[kind]
        print(f"{kind:<12} {found:>5} {total:>5} {found / total:>7.1%}")
    found = sum(f for f, _ in recall.values())
    total = sum(t for _, t in recall.values())
    print(f"{'all':<12} {found:>5} {total:>5} {found / total:>7.1%}")
    clean = json.loads(SYNTHETIC.read_text())["clean"]
    changed = sum(scrub(text).text != text for text in clean)
    held = sum(scrub(text).is_unsure for text in clean)
    print(f"identifier-free questions: {len(clean)}, changed {changed}, held {held}")
    print(f"elapsed {time.monotonic() - started:.1f} s (includes loading Presidio)")


if __name__ == "__main__":
    main()
