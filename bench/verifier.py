"""Latency of the claim check per answer: 5 claims, each citing its own abstract-sized passage.

    .venv/bin/python bench/verifier.py                         # every engine that can run here
    .venv/bin/python bench/verifier.py --engine cross-encoder --answers 200
    .venv/bin/python bench/verifier.py --data claims.jsonl --threads 2
    .venv/bin/python bench/verifier.py --engine cross-encoder --backends openvino,torch-int8

Claims and passages come from a claims file (`manage.py build_claims`) or, by default, are
built from LITERATURE_DATA_DIR/pubmedqa/pqal_dev.json. The cross-encoder is the configured one
(VERIFIER_MODEL, else the latest trained). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
CLAIMS_PER_ANSWER = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("all", "lexical", "cross-encoder"), default="all")
    parser.add_argument("--data", type=Path, help="A claims .jsonl file (default: built from "
                        "pqal_dev.json).")
    parser.add_argument("--answers", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2).")
    parser.add_argument("--backends", default="", help="Comma-separated VERIFIER_BACKEND "
                        "values to time the cross-encoder with, one after the other (default: "
                        "the configured one).")
    args = parser.parse_args()

    import django

    django.setup()
    import torch
    from django.conf import settings

    from evaluation.claims import build_pubmedqa_claims
    from modelsvc.citations import ParsedClaim
    from modelsvc.claim_changes import ClaimPair, read_claims_file
    from modelsvc.verification import score_claims
    from modelsvc.verifier import CrossEncoderVerifier, get_verifier, verifier_location
    from retrieval.embedding import embed_texts

    torch.set_num_threads(args.threads)
    pairs = (read_claims_file(args.data) if args.data else build_pubmedqa_claims(
        Path(settings.LITERATURE_DATA_DIR) / "pubmedqa" / "pqal_dev.json"))
    answers = [pairs[i:i + CLAIMS_PER_ANSWER]
               for i in range(0, len(pairs) - CLAIMS_PER_ANSWER, CLAIMS_PER_ANSWER)]
    answers = answers[:args.answers]
    words = statistics.mean(len(p.passage.split()) for answer in answers for p in answer)
    print(f"{len(answers)} answers of {CLAIMS_PER_ANSWER} claims, passages of {words:.0f} words "
          f"on average, torch threads {torch.get_num_threads()} (cpus {os.cpu_count()})")

    engines = ["lexical", "cross-encoder"] if args.engine == "all" else [args.engine]
    runs: list[tuple[str, Any]] = []
    for engine in engines:
        if engine == "lexical":
            runs.append(("lexical (MiniLM cosine + word overlap)", "lexical"))
            continue
        for backend in [b for b in args.backends.split(",") if b] or [""]:
            verifier = (CrossEncoderVerifier(verifier_location(), backend=backend) if backend
                        else get_verifier())
            runs.append((f"cross-encoder {verifier.name} ({verifier.backend})", verifier))
    for label, verifier in runs:

        def check(answer: list[ClaimPair], verifier: Any = verifier) -> None:
            claims = [ParsedClaim(p.claim, [n]) for n, p in enumerate(answer, start=1)]
            passages = {n: p.passage for n, p in enumerate(answer, start=1)}
            score_claims(claims, passages, embed=embed_texts, verifier=verifier)

        for answer in answers[:3]:  # warm up: load, first allocations
            check(answer)
        samples = []
        for answer in answers:
            started = time.perf_counter()
            check(answer)
            samples.append(time.perf_counter() - started)
        ordered = sorted(samples)
        print(f"{label}: per answer median {statistics.median(samples) * 1000:.1f} ms, "
              f"p95 {ordered[int(len(ordered) * 0.95) - 1] * 1000:.1f} ms, "
              f"mean {statistics.mean(samples) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
