"""OpenVINO int8 experiment (not a shipped backend): is int8 worth its quantization error?

    pip install nncf==3.4.0   # only this experiment uses it; not in requirements.txt
    VAR_DIR=/tmp/bench MODEL_CACHE_DIR=var/models python bench/openvino_int8.py
        [--abstracts 300] [--repeats 3]

Starts from the openvino backend's own export (MODEL_CACHE_DIR/embedding-openvino/model.xml,
made on first use) and compares, on N PubMedQA abstracts, in interleaved rounds:
- bf16: what EMBEDDING_BACKEND=openvino runs (bfloat16 where the CPU has it);
- int8-static: NNCF post-training quantization (model_type TRANSFORMER), calibrated on MEDLINE
  abstracts of pubmed21n1298 (never PubMedQA, which the speed and cosine are measured on);
- w8-dynamic: int8 weights (NNCF weight compression) with OpenVINO's dynamic quantization of
  activations (groups of 32).
Prints abstracts/s (best round) and the cosine of each variant's vectors to fp32 torch's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA = Path(os.environ.get("BENCH_DATA_DIR", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--abstracts", type=int, default=300)
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import nncf
    except ImportError:
        sys.exit("This experiment needs NNCF: pip install nncf==3.4.0")
    import django

    django.setup()
    import openvino
    from django.conf import settings

    from retrieval import embedding, parsers

    items = json.loads((DATA / "pubmedqa" / "pqal_dev.json").read_text())
    texts = [" ".join(item["CONTEXTS"]) for item in items.values()][:args.abstracts]
    medline = DATA / "pubmed" / "pubmed21n1298.xml.gz"
    calibration: list[str] = []
    for record in parsers.read_records(medline, "pubmed-xml", parsers.ReadReport()):
        if isinstance(record, parsers.ParsedArticle) and record.sections:
            calibration.append(record.abstract)
        if len(calibration) >= args.calibration:
            break
    print(f"{len(texts)} PubMedQA abstracts measured, {len(calibration)} MEDLINE abstracts "
          f"calibrate; load average {os.getloadavg()}")

    settings.EMBEDDING_BACKEND = "torch"
    reference = embedding.embed_texts(texts)
    tokenizer = embedding.get_embedder().tokenizer

    def encode(batch: list[str]) -> list[list[int]]:
        return tokenizer([t.strip() for t in batch], truncation=True,
                         max_length=embedding.max_tokens(), return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"]

    def batches(encoded: list[list[int]]) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        size = embedding.OPENVINO_BATCH_SIZE
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            width = max(len(encoded[i]) for i in rows)
            ids = np.zeros((len(rows), width), np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for row, i in enumerate(rows):
                ids[row, :len(encoded[i])] = encoded[i]
                mask[row, :len(encoded[i])] = 1
            yield rows, {"input_ids": ids, "attention_mask": mask}

    measured = encode(texts)

    def run(compiled: Any) -> np.ndarray:
        out = np.empty((len(texts), reference.shape[1]), np.float32)
        request = compiled.create_infer_request()
        for rows, feeds in batches(measured):
            hidden = request.infer(feeds)[0]
            weights = feeds["attention_mask"][:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    settings.EMBEDDING_BACKEND = "openvino"
    embedding.get_embedder()  # exports model.xml on first use
    xml = str(embedding.export_dir("openvino") / embedding.OPENVINO_FILE)
    core = openvino.Core()
    hint = {"PERFORMANCE_HINT": "LATENCY"}
    precision = "bf16" if embedding.cpu_has_bf16() else "f32"
    variants = {"bf16": core.compile_model(core.read_model(xml), "CPU",
                                           {**hint, "INFERENCE_PRECISION_HINT": precision})}
    started = time.perf_counter()
    dataset = nncf.Dataset([feeds for _rows, feeds in batches(encode(calibration))])
    quantized = nncf.quantize(core.read_model(xml), dataset, subset_size=len(calibration),
                              model_type=nncf.ModelType.TRANSFORMER)
    print(f"static quantization (calibration) {time.perf_counter() - started:.0f}s")
    variants["int8-static"] = core.compile_model(quantized, "CPU", hint)
    compressed = nncf.compress_weights(core.read_model(xml),
                                       mode=nncf.CompressWeightsMode.INT8_ASYM)
    variants["w8-dynamic"] = core.compile_model(compressed, "CPU", {
        **hint, "INFERENCE_PRECISION_HINT": precision, "DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"})
    best: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for compiled in variants.values():
        run(compiled)  # warm-up
    for _ in range(args.repeats):
        for name, compiled in variants.items():
            started = time.perf_counter()
            vectors[name] = run(compiled)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    for name in variants:
        cosines = (vectors[name] * reference).sum(axis=1)
        print(f"{name:12s} {len(texts) / best[name]:6.1f} abstracts/s  "
              f"x{best['bf16'] / best[name]:4.2f} bf16  cosine to fp32 torch mean "
              f"{cosines.mean():.4f} min {cosines.min():.4f}")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
