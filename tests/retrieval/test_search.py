"""Search: stages, fusion, rescoring, filters, errors, and the commands around them."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from pytest_django.fixtures import Settings as SettingsWrapper

import retrieval.search as search_module
from retrieval.models import Article, RetrievalEvalRun
from retrieval.search import RetrievalError, SearchFilters, search
from retrieval.services import ingest_paths
from tests.retrieval.pubmed_xml import (
    ASTHMA,
    DIABETES_OLD,
    SEPSIS_RETRACTED,
    STROKE,
    document,
    write,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def corpus(tmp_path: Path, index_dir: Path) -> Path:
    path = write(tmp_path / "corpus.xml", document(ASTHMA, STROKE, SEPSIS_RETRACTED,
                                                   DIABETES_OLD))
    ingest_paths([path])
    return path


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid", "hybrid+rerank"])
def test_every_mode_finds_the_article_a_question_is_about(corpus: Path, mode: str) -> None:
    result = search("Is as-needed budesonide-formoterol enough for mild asthma?", k=3,
                    mode=mode)
    top = result.hits[0]
    assert top.pmid == "1001"
    assert top.title == "Budesonide-formoterol as needed in mild asthma"
    assert top.year == 2018 and "Randomized Controlled Trial" in top.publication_types
    assert top.section and top.text.startswith("BACKGROUND:")
    expected_stages = {"bm25": {"bm25"}, "dense": {"dense"}, "hybrid": {"bm25", "dense", "hybrid"},
                       "hybrid+rerank": {"bm25", "dense", "hybrid", "rerank"}}[mode]
    assert set(top.stages) == expected_stages
    assert all(rank >= 1 for rank in top.stages.values())
    assert len({hit.pmid for hit in result.hits}) == len(result.hits)  # one hit per article
    assert result.timings_ms["total"] > 0


def test_dense_search_returns_the_query_embedding_and_reuses_a_given_one(corpus: Path) -> None:
    result = search("mechanical thrombectomy late after stroke", mode="dense", k=2)
    assert result.query_embedding is not None
    assert np.isclose(np.linalg.norm(result.query_embedding), 1.0, atol=1e-4)
    again = search("ignored text", mode="dense", k=2, query_embedding=result.query_embedding)
    assert [h.pmid for h in again.hits] == [h.pmid for h in result.hits]
    assert "embed" not in again.timings_ms


def test_retracted_articles_are_excluded_unless_asked_for_and_then_flagged(corpus: Path) -> None:
    question = "vitamin C hydrocortisone thiamine septic shock mortality"
    assert "1003" not in [hit.pmid for hit in search(question, k=4).hits]

    hits = search(question, k=4, filters=SearchFilters(exclude_retracted=False)).hits
    assert hits[0].pmid == "1003" and hits[0].retracted


def test_a_retraction_recorded_after_the_build_is_honoured_at_once(corpus: Path) -> None:
    Article.objects.filter(pmid="1002").update(retracted=True)
    hits = search("thrombectomy after ischemic stroke", k=4).hits
    assert "1002" not in [hit.pmid for hit in hits]


def test_hits_the_database_drops_are_replaced_from_further_down_the_ranking(
        corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_module, "FETCH_SLACK", 0)  # the first read gives k rows only
    question = "thrombectomy after ischemic stroke"
    first = search(question, k=1).hits[0]
    Article.objects.filter(pmid=first.pmid).update(retracted=True)
    hits = search(question, k=1).hits
    assert len(hits) == 1 and hits[0].pmid != first.pmid
    assert hits[0].pmid == search(question, k=2).hits[0].pmid  # the next in the ranking


def test_year_and_publication_type_filters(corpus: Path) -> None:
    question = "metformin lactic acidosis diabetes asthma stroke"
    recent = search(question, k=4, filters=SearchFilters(year_from=2000))
    assert {hit.pmid for hit in recent.hits} <= {"1001", "1002"}
    old = search(question, k=4, filters=SearchFilters(year_to=1999))
    assert [hit.pmid for hit in old.hits] == ["1004"]
    reviews = search(question, k=4, filters=SearchFilters(publication_types=("review",)))
    assert [hit.pmid for hit in reviews.hits] == ["1004"]


def test_errors_say_what_to_do(index_dir: Path) -> None:
    with pytest.raises(RetrievalError, match="python manage.py ingest"):
        search("anything")
    with pytest.raises(RetrievalError, match="Unknown search mode"):
        search("anything", mode="magic")
    with pytest.raises(RetrievalError, match="empty"):
        search("   ")


def test_a_corrupt_new_version_keeps_the_loaded_one_serving(corpus: Path) -> None:
    from retrieval import index_store

    good = search("asthma", k=1).index_version
    broken = index_store.versions_dir() / "20990101T000000000000Z-broken"
    broken.mkdir()
    index_store.write_pointer(broken.name)
    assert search("asthma", k=1).index_version == good


def test_the_search_command_shows_pmids_scores_and_stages(corpus: Path) -> None:
    out = StringIO()
    call_command("search", "thrombectomy after ischemic stroke", "-k", "2", "--json", stdout=out)
    payload = json.loads(out.getvalue())
    assert payload["hits"][0]["pmid"] == "1002"
    assert set(payload["hits"][0]["stages"]) == {"bm25", "dense", "hybrid", "rerank"}
    text = StringIO()
    call_command("search", "thrombectomy after ischemic stroke", "-k", "1", stdout=text)
    assert "PMID 1002" in text.getvalue() and "rerank#1" in text.getvalue()


def test_the_search_command_explains_a_missing_index(index_dir: Path) -> None:
    with pytest.raises(CommandError, match="python manage.py ingest"):
        call_command("search", "anything")


def reference_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
                      ) -> dict[str, float]:
    """Plain-Python metrics for one relevant document per query (what ranx computes)."""
    totals = dict.fromkeys(["recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"], 0.0)
    for query, relevant in qrels.items():
        ranking = sorted(run[query], key=lambda doc: -run[query][doc])[:10]
        rank = next((i for i, doc in enumerate(ranking, start=1) if doc in relevant), None)
        if rank:
            totals["recall@1"] += rank <= 1
            totals["recall@5"] += rank <= 5
            totals["recall@10"] += 1
            totals["mrr@10"] += 1 / rank
            totals["ndcg@10"] += 1 / np.log2(rank + 1)
    return {name: round(value / len(qrels), 4) for name, value in totals.items()}


def test_ranx_metrics_match_their_definition() -> None:
    from retrieval.evaluation import compute_metrics

    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": {"a": 1.0, "b": 0.5}, "q2": {"a": 1.0, "x": 0.9, "b": 0.3}, "q3": {"z": 1.0}}
    assert compute_metrics(qrels, run) == reference_metrics(qrels, run)


def test_eval_scores_every_mode_and_stores_the_run(tmp_path: Path, index_dir: Path) -> None:
    items = {
        "2001": {"QUESTION": "Does as-needed budesonide-formoterol prevent asthma attacks?",
                 "CONTEXTS": ["Adults with mild asthma used budesonide-formoterol as needed."],
                 "LABELS": ["METHODS"], "LONG_ANSWER": "Exacerbations were prevented."},
        "2002": {"QUESTION": "Is thrombectomy useful late after ischemic stroke?",
                 "CONTEXTS": ["Thrombectomy was done 6 to 24 hours after stroke onset."],
                 "LABELS": ["METHODS"], "LONG_ANSWER": "Thrombectomy improved outcomes."},
        "2003": {"QUESTION": "Not indexed question?", "CONTEXTS": ["x"], "LABELS": ["A"],
                 "LONG_ANSWER": "y"},
    }
    data = tmp_path / "pq.json"
    data.write_text(json.dumps(items))
    indexed = tmp_path / "indexed.json"
    indexed.write_text(json.dumps({k: v for k, v in items.items() if k != "2003"}))
    ingest_paths([indexed])
    out = StringIO()

    call_command("eval_retrieval", "--suite", "pubmedqa", "--data", str(data), "--json",
                 stdout=out)

    payload = json.loads(out.getvalue())
    run = RetrievalEvalRun.objects.get()
    assert payload["eval_run"] == run.pk
    assert (run.questions, run.skipped_not_indexed) == (2, 1)
    assert set(run.results) == {"bm25", "dense", "hybrid", "hybrid+rerank"}
    for scores in run.results.values():
        assert scores["recall@1"] == 1.0 and scores["mrr@10"] == 1.0
        assert scores["latency_ms_p95"] >= scores["latency_ms_p50"] > 0


def test_an_hnsw_index_is_recorded_in_the_manifest_and_searched(corpus: Path) -> None:
    from retrieval.index_build import build_index
    from retrieval.index_store import current_status

    manifest = build_index(index_type="hnsw", force=True)

    assert manifest["index_type"] == "hnsw" and manifest["index_params"]["M"] == 32
    assert current_status()["index_type"] == "hnsw"
    assert search("thrombectomy after ischemic stroke", k=1).hits[0].pmid == "1002"


@pytest.mark.parametrize("index_type", ["flat-ip", "hnsw"])
def test_dense_search_with_many_exclusions_uses_a_selector_and_stays_exact(
        index_type: str) -> None:
    from retrieval.index_build import make_dense_index
    from retrieval.index_store import LoadedIndex
    from retrieval.search import dense_search

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dense, _params = make_dense_index(vectors, index_type)
    positions = np.arange(3000)
    index = LoadedIndex(
        version="t", path=Path("."), manifest={"index_type": index_type}, dense=dense,
        on_gpu=False, chunk_ids=positions, article_ids=positions,
        years=np.zeros(3000, np.int16), retracted=np.zeros(3000, bool), pubtype_positions={},
        bm25=None, vectors=vectors.astype(np.float16))
    mask = np.zeros(3000, dtype=bool)
    mask[::3] = True  # 2000 excluded: more than the over-fetch path handles
    query = vectors[5]

    found, _scores = dense_search(index, query, 10, mask)

    allowed = np.flatnonzero(mask)
    expected = allowed[np.argsort(-(vectors[allowed] @ query))[:10]]
    assert mask[found].all()
    assert len(set(found[:10].tolist()) & set(expected.tolist())) >= 9


def test_rescoring_counts_query_terms_spread_over_an_articles_chunks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Document-level evidence: the article with every query term, spread over two chunks,
    beats one whose single chunk matches best but lacks a term, all else (cosine) equal."""
    import bm25s

    from retrieval import lexical
    from retrieval.index_store import LoadedIndex
    from retrieval.search import _article_bm25_scores, _bm25_scores, _rescore

    chunks = {(1, 0): "warfarin and bleeding in older patients with atrial fibrillation",
              (1, 1): "stroke prevention outcomes",
              (2, 0): "warfarin bleeding", (2, 1): "registry design",
              (3, 0): "stroke unit care", (3, 1): "nursing staff"}
    article_ids = np.array([a for a, _p in chunks], dtype=np.int64)
    chunk_bm25 = bm25s.BM25()
    chunk_bm25.index([lexical.tokenize(text) for text in chunks.values()], show_progress=False)
    article_bm25 = bm25s.BM25()
    article_bm25.index([lexical.tokenize(" ".join(t for (a, _p), t in chunks.items() if a == i))
                        for i in (1, 2, 3)], show_progress=False)
    vectors = np.tile(np.array([[1.0, 0.0]], dtype=np.float16), (6, 1))
    index = LoadedIndex(
        version="t", path=Path("."), manifest={}, dense=None, on_gpu=False,
        chunk_ids=np.arange(6), article_ids=article_ids, years=np.zeros(6, np.int16),
        retracted=np.zeros(6, bool), pubtype_positions={}, bm25=chunk_bm25, vectors=vectors,
        article_bm25=article_bm25, article_rows=np.array([1, 2, 3]))
    query, query_vector = "warfarin bleeding stroke", np.array([1.0, 0.0], dtype=np.float32)
    fused = [(2, 0.5, 2), (1, 0.4, 0)]  # the first stages put article 2 first

    ranked = _rescore(index, fused, query_vector, _bm25_scores(index, query),
                      _article_bm25_scores(index, query), None)

    assert [article for article, _s, _p in ranked] == [1, 2]
    # Chunk evidence alone (the weights of indexes without article BM25) keeps article 2 first.
    monkeypatch.setattr("retrieval.search.RESCORE_WEIGHTS", (0.5, 0.5, 0.0))
    ranked = _rescore(index, fused, query_vector, _bm25_scores(index, query),
                      _article_bm25_scores(index, query), None)
    assert [article for article, _s, _p in ranked] == [2, 1]


def test_an_index_built_before_the_article_level_bm25_still_serves(corpus: Path) -> None:
    import shutil

    from retrieval import index_store

    current = index_store.read_pointer()
    assert current and (index_store.versions_dir() / current / "bm25_articles").is_dir()
    shutil.rmtree(index_store.versions_dir() / current / "bm25_articles")
    index_store.reset_loaded_index()

    for mode in ("hybrid", "hybrid+rerank"):
        result = search("thrombectomy after ischemic stroke", k=2, mode=mode)
        assert result.hits[0].pmid == "1002"
    assert index_store.get_index().article_bm25 is None


def test_ivf_probes_the_same_share_of_lists_as_the_collection_grows(
        settings: SettingsWrapper) -> None:
    from retrieval.index_build import make_dense_index
    from retrieval.index_store import ivf_nprobe

    # 32 of 4,000 lists (1M vectors: Recall@10 0.948); more lists, as many more probes
    assert ivf_nprobe(4000) == 32
    assert ivf_nprobe(8944) == 72  # 5M vectors
    assert ivf_nprobe(30984) == 248  # 60M vectors, all of PubMed's chunks
    assert ivf_nprobe(1000) == 32 and ivf_nprobe(16) == 16  # never more than there are

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((20000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    _dense, params = make_dense_index(vectors, "ivf-pq")
    assert params["nprobe"] == ivf_nprobe(params["nlist"]) == 32

    settings.DENSE_IVF_NPROBE = 512  # an operator trading time for recall
    assert ivf_nprobe(8944) == 512 and ivf_nprobe(100) == 100
