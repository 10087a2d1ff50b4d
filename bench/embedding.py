"""Embedding benchmark: every EMBEDDING_BACKEND in one run, on real abstracts; asserts nothing.

    nice .venv/bin/python bench/embedding.py [--abstracts 300]
        [--backends torch,torch-bf16,openvino,openvino-int8,onnx,onnx-int8]
        [--data ../shared/data/pubmedqa/pqal_dev.json]

Embeds N PubMedQA abstracts (title-less: the joined CONTEXTS) through retrieval.embedding with
each backend, timing embed_texts after a warm-up (export and load are not timed; the first run
of an ONNX backend exports it into MODEL_CACHE_DIR/embedding-<backend>/; openvino-int8, when
not calibrated yet, is calibrated on 256 chunks of MEDLINE file pubmed21n1298, never on the
PubMedQA abstracts it is measured on). Prints abstracts/s,
the ratio to torch, and the mean/min cosine between each backend's vectors and torch's. Only
the ratios within one run compare well on a shared machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--abstracts", type=int, default=300)
    parser.add_argument("--backends",
                        default="torch,torch-bf16,openvino,openvino-int8,onnx,onnx-int8")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best counts")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "BENCH_DATA", ROOT.parent / "shared" / "data" / "pubmedqa" / "pqal_dev.json")))
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings

    from retrieval import embedding

    items = json.loads(args.data.read_text())
    texts = [" ".join(item["CONTEXTS"]) for item in items.values()][:args.abstracts]
    print(f"{len(texts)} abstracts from {args.data}, load average {os.getloadavg()}")
    backends = args.backends.split(",")
    loads: dict[str, str] = {}
    for backend in backends:  # export (first time) and load, untimed
        settings.EMBEDDING_BACKEND = backend
        started = time.perf_counter()
        loads[backend] = f"{embedding.backend_in_use()}, load {time.perf_counter() - started:.1f}s"
        session = embedding._session
        if isinstance(session, embedding.OpenVINOInt8Session) and not session.quantized:
            started = time.perf_counter()
            embedding.embed_texts(_calibration_texts(args.data.parent.parent))
            loads[backend] += f", calibrated {time.perf_counter() - started:.0f}s"
    # Rounds interleave the backends so that a change in the machine's load hits them alike;
    # the best round of each counts.
    best: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for backend in backends:
            settings.EMBEDDING_BACKEND = backend
            embedding.embed_texts(texts[:8])  # warm-up (and the reload after a switch)
            started = time.perf_counter()
            vectors[backend] = embedding.embed_texts(texts)
            best[backend] = min(best.get(backend, float("inf")), time.perf_counter() - started)
    reference = vectors.get("torch")
    for backend in backends:
        rate = len(texts) / best[backend]
        line = f"{backend:10s} ({loads[backend]})  {rate:7.1f} abstracts/s"
        if "torch" in best:
            line += f"  x{best['torch'] / best[backend]:4.2f} torch"
        if reference is not None and backend != "torch":
            cosines = (vectors[backend] * reference).sum(axis=1)
            line += f"  cosine to torch mean {cosines.mean():.4f} min {cosines.min():.4f}"
        print(line, flush=True)
    print(f"load average after {os.getloadavg()}")


def _calibration_texts(data: Path) -> list[str]:
    """What an ingest of pubmed21n1298 would embed first (title + chunk texts)."""
    from retrieval import embedding
    from retrieval.chunking import chunk_article
    from retrieval.parsers import ParsedArticle, ReadReport, read_records

    texts: list[str] = []
    path = data / "pubmed" / "pubmed21n1298.xml.gz"
    for record in read_records(path, "pubmed-xml", ReadReport()):
        if isinstance(record, ParsedArticle) and record.sections:
            texts.extend(draft.embedded_text(record.title) for draft in chunk_article(
                record.title, record.sections, max_tokens=embedding.max_tokens(),
                count_tokens=embedding.count_tokens))
        if len(texts) >= embedding.CALIBRATION_TEXTS:
            return texts
    sys.exit(f"{path} has fewer than {embedding.CALIBRATION_TEXTS} chunks to calibrate on")


if __name__ == "__main__":
    main()
