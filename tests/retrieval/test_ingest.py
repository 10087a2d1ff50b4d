"""Ingestion end to end: database state, index versions, idempotence, bad input."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import pytest

from retrieval import embedding, index_store, services
from retrieval.index_store import current_status, get_index
from retrieval.models import Article, Chunk, ChunkEmbedding, IngestFile, IngestRun
from retrieval.search import search
from retrieval.services import IngestError, ingest_paths
from tests.retrieval.pubmed_xml import (
    ASTHMA,
    DIABETES_OLD,
    NO_ABSTRACT,
    SEPSIS_RETRACTED,
    STROKE,
    article_xml,
    delete_xml,
    document,
    write,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def baseline(tmp_path: Path, index_dir: Path) -> Path:
    duplicate = STROKE.replace("Thrombectomy six", "A second copy: thrombectomy six")
    return write(tmp_path / "baseline.xml.gz",
                 document(ASTHMA, STROKE, SEPSIS_RETRACTED, DIABETES_OLD, NO_ABSTRACT, duplicate))


def test_it_stores_articles_chunks_and_a_report_per_file(baseline: Path) -> None:
    run = ingest_paths([baseline])

    assert run.status == IngestRun.Status.COMPLETE
    [report] = run.files.all()
    assert (report.status, report.articles_read, report.created, report.skipped) == \
        (IngestFile.Status.DONE, 6, 4, 2)
    assert report.issues == {"duplicate PMID in file": 1, "no abstract": 1}
    assert set(Article.objects.values_list("pmid", flat=True)) == {"1001", "1002", "1003", "1004"}
    asthma = Article.objects.get(pmid="1001")
    assert asthma.abstract_sections[0] == ["BACKGROUND", asthma.abstract_sections[0][1]]
    assert asthma.title == "Budesonide-formoterol as needed in mild asthma"  # not the duplicate
    assert Article.objects.get(pmid="1003").retracted
    chunk = asthma.chunks.get()
    assert chunk.section == "BACKGROUND, METHODS, RESULTS, CONCLUSIONS"
    assert chunk.text.startswith("BACKGROUND: ")
    assert ChunkEmbedding.objects.count() == Chunk.objects.count() == report.chunks_embedded
    status = current_status()
    assert status["loaded"] and (status["articles"], status["chunks"]) == (4, 4)
    assert status["index_type"] == "flat-ip"
    assert status["version"] == run.index_version


def test_batches_are_embedded_in_the_background_and_none_is_missed(
        baseline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "ARTICLE_BATCH", 1)  # one article per batch: 4 handovers
    threads = []
    real = embedding.embed_texts

    def watched(texts: list[str]) -> object:
        threads.append(threading.current_thread().name)
        return real(texts)

    monkeypatch.setattr(embedding, "embed_texts", watched)
    run = ingest_paths([baseline])

    [report] = run.files.all()
    assert report.status == IngestFile.Status.DONE
    assert len(threads) == 4 and all(name.startswith("ingest-embed") for name in threads)
    assert ChunkEmbedding.objects.count() == Chunk.objects.count() == report.chunks_embedded == 4
    assert search("thrombectomy after ischemic stroke", k=1).hits[0].pmid == "1002"


def test_an_embedding_failure_fails_the_file_and_the_index_build_embeds_what_is_missing(
        baseline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "ARTICLE_BATCH", 1)
    calls = []
    real = embedding.embed_texts

    def fails_once(texts: list[str]) -> object:
        calls.append(len(texts))
        if len(calls) == 2:
            raise RuntimeError("encoder crashed")
        return real(texts)

    monkeypatch.setattr(embedding, "embed_texts", fails_once)
    run = ingest_paths([baseline])

    [report] = run.files.all()
    assert report.status == IngestFile.Status.FAILED
    assert report.error == "RuntimeError: encoder crashed"
    # the articles stored before the failure are kept, and the run's index build embedded
    # the chunks their batches left without a vector
    assert Article.objects.count() == report.created >= 2
    assert ChunkEmbedding.objects.count() == Chunk.objects.count() == report.created
    assert run.status == IngestRun.Status.COMPLETE
    assert get_index().size == Chunk.objects.count()


def test_running_the_same_ingest_again_changes_nothing(baseline: Path) -> None:
    first = ingest_paths([baseline])
    chunk_ids = list(Chunk.objects.values_list("id", flat=True))

    second = ingest_paths([baseline])

    [report] = second.files.all()
    assert (report.created, report.updated, report.unchanged, report.chunks_embedded) == \
        (0, 0, 4, 0)
    assert list(Chunk.objects.values_list("id", flat=True)) == chunk_ids
    assert second.index_version == first.index_version
    assert len(list(index_store.versions_dir().iterdir())) == 1


def test_an_update_file_replaces_records_and_deletes_citations(baseline: Path,
                                                                tmp_path: Path) -> None:
    ingest_paths([baseline])
    old_version = get_index().version
    assert search("thrombectomy after ischemic stroke", k=1).hits[0].pmid == "1002"
    revised = article_xml("1001", "Budesonide-formoterol reliever therapy in mild asthma",
                          [("", "A revised abstract about as-needed budesonide-formoterol.")],
                          year=2019)
    update = write(tmp_path / "update.xml", document(revised, delete_xml("1002", "999")))

    run = ingest_paths([update])

    [report] = run.files.all()
    assert (report.updated, report.deleted) == (1, 1)
    assert report.issues == {"deletion of a PMID not in the database": 1}
    assert not Article.objects.filter(pmid="1002").exists()
    asthma = Article.objects.get(pmid="1001")
    assert (asthma.title, asthma.year) == ("Budesonide-formoterol reliever therapy in mild "
                                           "asthma", 2019)
    assert asthma.chunks.get().text == "A revised abstract about as-needed budesonide-formoterol."
    # The running process picks up the new version without a restart.
    result = search("thrombectomy after ischemic stroke", k=5)
    assert result.index_version == run.index_version != old_version
    assert "1002" not in [hit.pmid for hit in result.hits]
    assert get_index().size == Chunk.objects.count()


def test_a_bad_file_is_reported_and_leaves_the_index_intact(baseline: Path,
                                                           tmp_path: Path) -> None:
    ingest_paths([baseline])
    version = get_index().version
    full = gzip.compress(document(*([DIABETES_OLD] * 50)))
    cut = tmp_path / "cut.xml.gz"
    cut.write_bytes(full[: len(full) // 2])
    garbage = tmp_path / "garbage.xml"
    garbage.write_bytes(b"\x00\x01 this is not XML at all")

    run = ingest_paths([cut, garbage])

    reports = {Path(f.path).name: f for f in run.files.all()}
    assert "file truncated or corrupt (read stopped early)" in reports["cut.xml.gz"].issues
    assert reports["cut.xml.gz"].status == IngestFile.Status.DONE
    assert any(reason.startswith("no PubMed records found") for reason in
               reports["garbage.xml"].issues)
    assert reports["garbage.xml"].status == IngestFile.Status.FAILED
    assert "No records could be read from garbage.xml" in reports["garbage.xml"].error
    assert run.status == IngestRun.Status.COMPLETE
    assert "1 file(s) failed" in run.error
    assert run.index_version == version  # nothing changed, nothing rebuilt
    assert search("metformin lactic acidosis", k=1).hits[0].pmid == "1004"


def test_it_rejects_missing_files_and_unknown_formats(tmp_path: Path, index_dir: Path) -> None:
    with pytest.raises(IngestError, match="does not exist"):
        ingest_paths([tmp_path / "missing.xml"])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(IngestError, match="--format"):
        ingest_paths([notes])
    assert not IngestRun.objects.exists()


def test_status_explains_how_to_build_an_index_when_there_is_none(index_dir: Path) -> None:
    status = current_status()
    assert status["loaded"] is False
    assert "python manage.py ingest" in status["message"]
