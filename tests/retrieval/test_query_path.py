"""The query path's cost: one FAISS thread per query, only the columns a hit shows, and the
stages before generation timed on every answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from clinic.answering import prepare_answer
from clinic.models import Consultation
from retrieval.index_store import LoadedIndex
from retrieval.search import dense_search, search

QUESTION = "Does low-dose aspirin prevent recurrent stroke?"


class _RecordingIndex:
    """A flat index that notes how many OpenMP threads each search may use."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.inner = faiss.IndexFlatIP(vectors.shape[1])
        self.inner.add(vectors)
        self.threads: list[int] = []

    def search(self, query: np.ndarray, k: int, **kwargs: Any) -> Any:
        self.threads.append(faiss.omp_get_max_threads())
        return self.inner.search(query, k, **kwargs)


def test_a_dense_search_uses_one_thread_then_gives_the_caller_its_threads_back() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    recording = _RecordingIndex(vectors)
    index = LoadedIndex(
        version="v", path=Path("."), manifest={"index_type": "flat-ip"}, dense=recording,
        on_gpu=False, chunk_ids=np.arange(500), article_ids=np.arange(500),
        years=np.zeros(500, np.int16), retracted=np.zeros(500, bool), pubtype_positions={},
        bm25=None, vectors=vectors.astype(np.float16))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    try:
        positions, scores = dense_search(index, vectors[7], 10, None)
        after = faiss.omp_get_max_threads()
    finally:
        faiss.omp_set_num_threads(before)

    assert recording.threads == [1]
    assert after == 3
    assert positions.tolist() == np.argsort(-(vectors @ vectors[7]))[:10].tolist()
    assert abs(float(scores[0]) - 1.0) < 1e-5


def test_hits_read_only_the_columns_they_show_and_answers_time_each_stage_before_generation(
        tiny_index: Path, clinician: User) -> None:
    with CaptureQueriesContext(connection) as queries:
        result = search(QUESTION, k=3)
    assert result.hits[0].pmid == "90000001" and result.hits[0].title
    fetch = [q["sql"] for q in queries.captured_queries if "retrieval_chunk" in q["sql"]]
    assert len(fetch) == 1
    assert '"abstract"' not in fetch[0] and '"mesh_terms"' not in fetch[0]

    consultation = Consultation.objects.create(user=clinician, question=QUESTION)
    prepare_answer(QUESTION, consultation=consultation)
    consultation.refresh_from_db()
    stages = consultation.stage_timings
    for stage in ("embed_ms", "route_ms", "retrieve_ms", "fit_ms", "prompt_ms"):
        assert stages[stage] >= 0, stage
    assert stages["retrieve_ms"] >= stages["retrieve_fetch"]
