"""Retrieval benchmark: prints figures, asserts nothing.

    .venv/bin/python bench/retrieval.py [--ingest-sample 200] [--queries 100]
                                        [--synthetic 1000000] [--skip-synthetic] [--hnsw]

1. Ingest throughput on a sample of PubMedQA abstracts, in a throwaway VAR_DIR: articles/s,
   the share of time in SentenceTransformer.encode, and the pipeline's overhead over a bare
   encode of the same chunk texts.
2. Query latency p50/p95 per stage and per mode on the *current* index (VAR_DIR/INDEX_DIR as
   configured), index memory, and the query path's overhead over a bare FAISS search.
3. Dense search latency at N synthetic vectors (flat inner product and IVF-PQ; HNSW with
   --hnsw, whose build takes a long time on a few cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    return f"p50 {np.percentile(values, 50):8.2f} ms   p95 {np.percentile(values, 95):8.2f} ms"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup_django() -> None:
    import django

    django.setup()


# --- 1. ingest ----------------------------------------------------------------------------


def ingest_phase(sample: int, data: Path) -> None:
    """Runs in a child process whose VAR_DIR is a temporary folder."""
    setup_django()
    from django.core.management import call_command

    from retrieval import embedding
    from retrieval.models import Article, Chunk
    from retrieval.services import drafts_text, ingest_paths

    call_command("migrate", verbosity=0)
    items = json.loads(data.read_text())
    subset = dict(list(items.items())[:sample])
    path = Path(tempfile.mkdtemp()) / "sample.json"
    path.write_text(json.dumps(subset))
    embedder = embedding.get_embedder()  # load time is not ingest time
    embedding.embed_texts(["warm-up"])
    embedding.ENCODE_SECONDS[0] = 0.0

    started = time.perf_counter()
    run = ingest_paths([path])
    total = time.perf_counter() - started
    encode_seconds = embedding.ENCODE_SECONDS[0]

    texts = [drafts_text(title, text) for title, text in
             Chunk.objects.values_list("article__title", "text")]
    started = time.perf_counter()
    embedder.encode(texts, batch_size=embedding.BATCH_SIZE, normalize_embeddings=True,
                    show_progress_bar=False)
    raw = time.perf_counter() - started
    print(json.dumps({
        "articles": Article.objects.count(), "chunks": len(texts), "seconds": total,
        "encode_seconds": encode_seconds, "raw_encode_seconds": raw,
        "index_version": run.index_version,
    }))


def bench_ingest(sample: int, data: Path) -> None:
    print(f"\n== ingest throughput ({sample} PubMedQA abstracts, in-process, fresh VAR_DIR)")
    with tempfile.TemporaryDirectory() as var_dir:
        env = {**os.environ, "VAR_DIR": var_dir}
        env.pop("INDEX_DIR", None)
        env.pop("DATABASE_URL", None)
        out = subprocess.run([sys.executable, __file__, "--phase", "ingest", "--ingest-sample",
                              str(sample), "--data", str(data)], env=env, check=True,
                             capture_output=True, text=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    seconds, encode, raw = figures["seconds"], figures["encode_seconds"], \
        figures["raw_encode_seconds"]
    print(f"articles {figures['articles']}, chunks {figures['chunks']}, "
          f"{figures['articles'] / seconds:.2f} articles/s, {figures['chunks'] / seconds:.2f} "
          f"chunks/s")
    print(f"time: total {seconds:.1f}s, in encode {encode:.1f}s ({100 * encode / seconds:.0f}%),"
          f" everything else {seconds - encode:.1f}s ({100 * (seconds - encode) / seconds:.0f}%)")
    print(f"pipeline overhead over its own encode calls: {100 * (seconds - encode) / encode:.1f}%"
          " (parsing, hashing, chunking, database, index build)")
    # On a shared machine this second figure moves with the neighbours' load; the first
    # compares two measurements taken in the same run.
    print(f"bare SentenceTransformer.encode of the same chunk texts: {raw:.1f}s "
          f"(pipeline total / bare encode = {seconds / raw:.2f})")


# --- 2. queries on the current index ------------------------------------------------------


def bench_queries(queries: int, data: Path) -> None:
    setup_django()
    from retrieval import embedding
    from retrieval.index_store import get_index
    from retrieval.search import MODES, SearchFilters, search

    before = rss_mb()
    started = time.perf_counter()
    index = get_index()
    load_seconds = time.perf_counter() - started
    after = rss_mb()
    print(f"\n== current index {index.version}: {index.manifest['articles']} articles, "
          f"{index.size} chunks, {index.manifest['index_type']} (loaded in {load_seconds:.2f}s)")
    sizes: dict[str, int] = {}
    for item in index.path.rglob("*"):
        if item.is_file():
            key = item.relative_to(index.path).parts[0]
            sizes[key] = sizes.get(key, 0) + item.stat().st_size
    print("index files: " + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in
                                      sorted(sizes.items())) +
          f"; total {sum(sizes.values()) / 2**20:.1f} MiB")
    print(f"process max RSS grew {after - before:.0f} MiB while loading (vectors.f16 is mmap'd)")

    questions = [item["QUESTION"] for item in json.loads(data.read_text()).values()][:queries]
    embedding.embed_texts(["warm-up"])
    for mode in MODES:
        search(questions[0], k=10, mode=mode)  # warm caches
        stages: dict[str, list[float]] = {}
        for question in questions:
            result = search(question, k=10, mode=mode, filters=SearchFilters())
            for stage, ms in result.timings_ms.items():
                stages.setdefault(stage, []).append(ms)
        print(f"-- mode {mode} ({len(questions)} queries, k=10)")
        for stage, values in stages.items():
            print(f"   {stage:<8} {percentiles(values)}")

    vectors = embedding.embed_texts(questions)
    bare, full = [], []
    for vector in vectors:
        query = vector.reshape(1, -1)
        started = time.perf_counter()
        index.dense.search(query, 100)
        bare.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        search("", k=10, mode="dense", query_embedding=vector)
        full.append((time.perf_counter() - started) * 1000)
    print("-- dense query path vs bare FAISS (embedding given, so both skip the encoder)")
    print(f"   bare faiss search(k=100)  {percentiles(bare)}")
    print(f"   search(mode='dense')      {percentiles(full)}")
    print(f"   overhead p50 {np.percentile(full, 50) - np.percentile(bare, 50):.2f} ms "
          f"({np.percentile(full, 50) / max(np.percentile(bare, 50), 1e-6):.1f}x); it is the "
          "filter mask, article collapse and one database query for the hits")


# --- 3. synthetic vectors -----------------------------------------------------------------


def bench_synthetic(count: int, with_hnsw: bool, dimension: int = 384, queries: int = 50) -> None:
    import faiss

    setup_django()
    from retrieval.index_build import make_dense_index

    print(f"\n== dense search at {count:,} synthetic {dimension}-d vectors "
          f"({faiss.omp_get_max_threads()} threads)")
    rng = np.random.default_rng(0)
    # Clustered like real embeddings (topics), not uniform on the sphere, where nearest
    # neighbours are meaningless and every approximate index looks broken.
    centres = rng.standard_normal((max(1, count // 50), dimension), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.empty((count, dimension), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        vectors[start:stop] = centres[rng.integers(0, len(centres), stop - start)] + \
            rng.standard_normal((stop - start, dimension), dtype=np.float32) * \
            (0.6 / np.sqrt(dimension))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    probes = vectors[rng.choice(count, queries, replace=False)] + \
        rng.standard_normal((queries, dimension), dtype=np.float32) * (0.3 / np.sqrt(dimension))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    kinds = ["flat-ip", "ivf-pq"] + (["hnsw"] if with_hnsw else [])
    truth = None
    for kind in kinds:
        started = time.perf_counter()
        index, params = make_dense_index(vectors, kind)
        build = time.perf_counter() - started
        if kind == "ivf-pq":
            faiss.extract_index_ivf(index).nprobe = params["nprobe"]
            params["refine"] = "4x candidates re-scored exactly (as the query path does)"
        if kind == "hnsw":
            index.hnsw.efSearch = params["efSearch"]
        latencies, found = [], []
        for probe in probes:
            started = time.perf_counter()
            if kind == "ivf-pq":
                _scores, ids = index.search(probe.reshape(1, -1), 400)
                candidates = ids[0][ids[0] >= 0]
                exact = vectors[candidates] @ probe
                found.append(candidates[np.argsort(-exact)[:100]])
            else:
                _scores, ids = index.search(probe.reshape(1, -1), 100)
                found.append(ids[0])
            latencies.append((time.perf_counter() - started) * 1000)
        if truth is None:
            truth = found
        recall = float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in
                                zip(found, truth, strict=True)]))
        memory = faiss.serialize_index(index).nbytes / 2**20
        print(f"   {kind:<8} build {build:7.1f}s  search(k=100) {percentiles(latencies)}  "
              f"recall@10 vs exact {recall:.3f}  index {memory:,.0f} MiB  {params}")
        del index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["all", "ingest"], default="all")
    parser.add_argument("--data", type=Path,
                        default=ROOT.parent / "shared" / "data" / "pubmedqa" / "pqal_dev.json")
    parser.add_argument("--ingest-sample", type=int, default=200)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--synthetic", type=int, default=1_000_000)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--hnsw", action="store_true")
    parser.add_argument("--only-synthetic", action="store_true")
    args = parser.parse_args()
    if args.phase == "ingest":
        ingest_phase(args.ingest_sample, args.data)
        return
    if args.only_synthetic:
        bench_synthetic(args.synthetic, args.hnsw)
        return
    if not args.skip_ingest:
        bench_ingest(args.ingest_sample, args.data)
    bench_queries(args.queries, args.data)
    if not args.skip_synthetic:
        bench_synthetic(args.synthetic, args.hnsw)


if __name__ == "__main__":
    main()
