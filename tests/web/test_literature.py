"""The literature page: a clinician sees how much is indexed and what is still indexing, searches
the real index (titles, journal, year, publication types, PubMed links) and browses articles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from retrieval.models import Article, IngestFile, IngestRun

pytestmark = pytest.mark.django_db


def _article(pmid: str, year: int, title: str = "", **extra: Any) -> Article:
    return Article.objects.create(pmid=pmid, year=year, title=title or f"Trial {pmid}",
                                  journal="The Lancet", content_hash=pmid,
                                  publication_types=["Randomized Controlled Trial"], **extra)


def test_it_needs_a_login(client: Client) -> None:
    response = client.get("/literature/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_the_top_navigation_links_to_it(client: Client, clinician: User) -> None:
    client.force_login(clinician)
    assert b'href="/literature/"' in client.get("/").content


def test_it_shows_counts_and_says_when_there_is_no_index(client: Client, clinician: User,
                                                         settings: Any, tmp_path: Path) -> None:
    settings.INDEX_DIR = tmp_path / "no-index"
    _article("1001", 2021)
    client.force_login(clinician)
    response = client.get("/literature/")
    page = response.content.decode()
    assert response.status_code == 200
    assert '<strong id="article-count">1</strong> articles' in page
    assert "No search index yet" in page


def test_it_browses_articles_newest_first_with_their_journal_and_type(
        client: Client, clinician: User) -> None:
    _article("1001", 2019, "Older statin trial")
    _article("1002", 2021, "Newer metformin trial", retracted=True)
    client.force_login(clinician)
    page = client.get("/literature/").content.decode()
    assert page.index("Newer metformin trial") < page.index("Older statin trial")
    assert "The Lancet · 2021 · Randomized Controlled Trial · PMID 1002" in page
    assert 'href="https://pubmed.ncbi.nlm.nih.gov/1002/"' in page
    assert "Retracted" in page


def test_browsing_takes_the_same_queries_for_one_article_or_twenty(
        client: Client, clinician: User) -> None:
    client.force_login(clinician)
    _article("2000", 2020)
    with CaptureQueriesContext(connection) as one:
        client.get("/literature/")
    for number in range(2001, 2030):
        _article(str(number), 2020)
    with CaptureQueriesContext(connection) as many:
        page = client.get("/literature/").content.decode()
    assert len(many) == len(one)
    assert "Page 1 of 2" in page


def test_it_shows_what_is_still_indexing(client: Client, clinician: User) -> None:
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING, use_celery=True)
    IngestFile.objects.create(run=run, path="/data/pubmed/pubmed21n1298.xml.gz",
                              format="pubmed-xml", status=IngestFile.Status.RUNNING,
                              bytes_total=1000, bytes_done=400, articles_read=8000, created=7000)
    IngestFile.objects.create(run=run, path="/data/pubmed/pubmed20n0014.xml.gz",
                              format="pubmed-xml", status=IngestFile.Status.PENDING,
                              bytes_total=1000)
    client.force_login(clinician)
    page = client.get("/literature/").content.decode()
    assert "Still indexing" in page
    assert "pubmed21n1298.xml.gz" in page and "pubmed20n0014.xml.gz" in page
    assert "40% · 8000 records read, 7000 new" in page
    assert f"Run {run.pk}: Ingesting files" in page


def test_when_nothing_is_indexing_it_names_the_last_run(client: Client, clinician: User) -> None:
    run = IngestRun.objects.create(status=IngestRun.Status.COMPLETE)
    client.force_login(clinician)
    page = client.get("/literature/").content.decode()
    assert "Still indexing" not in page
    assert f"Last ingest run {run.pk}: complete" in page


def test_search_finds_titled_evidence_in_the_real_index(client: Client, clinician: User,
                                                        tiny_index: Path) -> None:
    client.force_login(clinician)
    response = client.get("/literature/", {"q": "metformin in kidney disease"})
    page = response.content.decode()
    assert response.status_code == 200
    results = page[page.index('id="results"'):page.index("</ol>")]
    first_hit = results.split("<li>")[1]
    assert "Metformin use in chronic kidney disease stage 3" in first_hit
    assert "Synthetic Nephrology · 2020 · Journal Article · PMID 90000002" in page
    assert 'href="https://pubmed.ncbi.nlm.nih.gov/90000002/"' in page
    assert "Search index " in page and "6 articles" in page
    assert 'id="articles"' not in page  # a search replaces the browse list


def test_a_search_with_no_index_says_so_instead_of_failing(client: Client, clinician: User,
                                                           settings: Any, tmp_path: Path) -> None:
    settings.INDEX_DIR = tmp_path / "no-index"
    client.force_login(clinician)
    response = client.get("/literature/", {"q": "aspirin"})
    assert response.status_code == 200
    assert 'class="error"' in response.content.decode()
