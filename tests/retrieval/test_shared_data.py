"""Real PubMedQA abstracts: hybrid search finds each question's own article."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.search import search
from retrieval.services import ingest_paths

ARTICLES = 40


@pytest.mark.shared_data
@pytest.mark.django_db
def test_hybrid_search_finds_the_article_behind_each_pubmedqa_question(
        shared_data_dir: Path, tmp_path: Path, index_dir: Path) -> None:
    items = json.loads((shared_data_dir / "pubmedqa" / "pqal_dev.json").read_text())
    subset = dict(list(items.items())[:ARTICLES])
    path = tmp_path / "pqal_subset.json"
    path.write_text(json.dumps(subset))

    run = ingest_paths([path])

    assert run.files.get().created == ARTICLES
    ranks = []
    for pmid, item in subset.items():
        hits = search(item["QUESTION"], k=5, mode="hybrid+rerank").hits
        pmids = [hit.pmid for hit in hits]
        ranks.append(pmids.index(pmid) + 1 if pmid in pmids else None)
    recall_at_1 = sum(rank == 1 for rank in ranks) / len(ranks)
    recall_at_5 = sum(rank is not None for rank in ranks) / len(ranks)
    assert recall_at_1 >= 0.9, ranks
    assert recall_at_5 >= 0.97, ranks
