"""Ingest correctness whatever the delivery: one worker per file, NLM's file order, and per-PMID
versions (the newest record wins, a deletion stays deleted)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from config.celery import app
from retrieval import article_store, services
from retrieval.article_store import OLDER_THAN_DELETION, OLDER_THAN_STORED
from retrieval.claims import ClaimLost, claim_file
from retrieval.file_order import blocking_file, file_sequence
from retrieval.index_store import get_index
from retrieval.models import (
    INGEST_OWNER_STALE_AFTER,
    Article,
    ArticleTombstone,
    Chunk,
    IngestFile,
    IngestRun,
)
from retrieval.search import search
from retrieval.services import ingest_paths
from retrieval.tasks import ingest_file_task
from tests.retrieval.pubmed_xml import (
    ASTHMA,
    NO_ABSTRACT,
    STROKE,
    article_xml,
    delete_xml,
    document,
    write,
)

pytestmark = pytest.mark.django_db

ASTHMA_REVISED = article_xml(
    "1001", "Budesonide-formoterol reliever therapy in mild asthma (revised)",
    [("", "A revised abstract: as-needed budesonide-formoterol halved severe exacerbations.")],
    year=2019)
ASTHMA_INTERIM = article_xml(
    "1001", "Budesonide-formoterol as needed: interim record",
    [("", "An interim abstract about budesonide-formoterol in mild asthma.")], year=2018)
ASTHMA_WITHOUT_ABSTRACT = article_xml("1001", "Budesonide-formoterol: abstract withdrawn", [])


@pytest.fixture
def eager_celery() -> Iterator[None]:
    saved = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = saved


@pytest.fixture
def baseline(tmp_path: Path, index_dir: Path) -> Path:
    return write(tmp_path / "pubmed26n0001.xml.gz", document(ASTHMA, STROKE))


def _update(tmp_path: Path, number: int, *records: str) -> Path:
    return write(tmp_path / f"pubmed26n{number:04d}.xml.gz", document(*records))


def _file_row(run: IngestRun, path: Path) -> IngestFile:
    return run.files.get(path=str(path.resolve()))


def _counting_batches(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """PMIDs handed to the article store, counted: a file ingested twice counts them twice."""
    seen: Counter[str] = Counter()
    real = services.apply_batch

    def counting(records: list[Any], drops: list[Any], **kwargs: Any) -> Any:
        seen.update(record.pmid for record in records)
        return real(records, drops, **kwargs)

    monkeypatch.setattr(services, "apply_batch", counting)
    return seen


# --- one worker per file ------------------------------------------------------------------


def test_a_redelivered_message_finds_its_file_running_and_does_nothing(
        baseline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _counting_batches(monkeypatch)
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING, use_celery=True)
    ingest_file = IngestFile.objects.create(run=run, path=str(baseline), format="pubmed-xml",
                                            sequence=file_sequence(baseline))
    redeliveries: list[IngestFile] = []

    def redeliver_while_running(row: IngestFile) -> None:
        if not redeliveries:  # the broker hands the same message to a second worker
            ingest_file_task.apply(args=[row.pk])
            redeliveries.append(IngestFile.objects.get(pk=row.pk))

    services.ingest_file_by_id(ingest_file.pk, progress=redeliver_while_running)

    [during] = redeliveries
    assert during.status == IngestFile.Status.RUNNING and during.owner_alive()
    ingest_file.refresh_from_db()
    assert (ingest_file.status, ingest_file.created) == (IngestFile.Status.DONE, 2)
    assert seen == {"1001": 1, "1002": 1}
    assert not ingest_file.owner_alive()


def test_the_same_file_queued_in_a_second_run_waits_for_the_first(
        baseline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _counting_batches(monkeypatch)
    first = ingest_paths([baseline], use_celery=True).files.get()
    second = ingest_paths([baseline], use_celery=True).files.get()
    claim = claim_file(first.pk)  # a worker is ingesting the first run's row
    assert claim is not None

    ingest_file_task.apply(args=[second.pk])

    second.refresh_from_db()
    assert (second.status, second.waiting_for) == (IngestFile.Status.PENDING,
                                                    "waiting for pubmed26n0001.xml.gz")
    assert seen == {}


def test_a_file_whose_worker_went_quiet_is_taken_over_and_the_old_worker_stops(
        baseline: Path) -> None:
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING, use_celery=True)
    ingest_file = IngestFile.objects.create(run=run, path=str(baseline), format="pubmed-xml")
    dead_worker = claim_file(ingest_file.pk)
    assert dead_worker is not None and claim_file(ingest_file.pk) is None
    IngestFile.objects.filter(pk=ingest_file.pk).update(
        heartbeat_at=timezone.now() - INGEST_OWNER_STALE_AFTER - timedelta(seconds=1))
    ingest_file.refresh_from_db()
    assert not ingest_file.owner_alive()
    assert IngestFile.objects.without_live_owner().filter(pk=ingest_file.pk).exists()

    ingest_file_task.apply(args=[ingest_file.pk])

    ingest_file.refresh_from_db()
    assert (ingest_file.status, ingest_file.created) == (IngestFile.Status.DONE, 2)
    with pytest.raises(ClaimLost):
        dead_worker.save(bytes_done=0)  # its next write finds the file is not its own
    ingest_file.refresh_from_db()
    assert ingest_file.bytes_done == baseline.stat().st_size  # the new owner's figure stands


# --- NLM's file order ---------------------------------------------------------------------


def test_update_files_are_numbered_after_their_baseline_and_other_files_are_not() -> None:
    assert file_sequence("/data/pubmed26n0001.xml.gz") < file_sequence("pubmed26n1402.xml") \
        < file_sequence("pubmed27n0001.xml.gz")  # type: ignore[operator]
    assert file_sequence("pubmed-29768149.xml") is None
    assert file_sequence("pqal_dev.json") is None


def test_an_update_queued_before_the_baseline_waits_then_ends_with_its_version(
        baseline: Path, tmp_path: Path, eager_celery: None,
        django_capture_on_commit_callbacks: Callable[..., Any]) -> None:
    update = _update(tmp_path, 1400, ASTHMA_REVISED)
    run = ingest_paths([update, baseline], use_celery=True)  # messages not sent: test txn
    update_row, baseline_row = _file_row(run, update), _file_row(run, baseline)

    ingest_file_task.apply(args=[update_row.pk])  # the update is delivered first

    update_row.refresh_from_db()
    assert (update_row.status, update_row.waiting_for) == (IngestFile.Status.PENDING,
                                                            "waiting for pubmed26n0001.xml.gz")
    assert not Article.objects.exists()
    assert blocking_file(update_row) == baseline_row

    with django_capture_on_commit_callbacks(execute=True):
        ingest_file_task.apply(args=[baseline_row.pk])  # ... and queues the update when done

    update_row.refresh_from_db()
    run.refresh_from_db()
    assert (update_row.status, update_row.updated, update_row.waiting_for) == \
        (IngestFile.Status.DONE, 1, "")
    assert run.status == IngestRun.Status.COMPLETE
    asthma = Article.objects.get(pmid="1001")
    assert (asthma.title, asthma.source_sequence) == (
        "Budesonide-formoterol reliever therapy in mild asthma (revised)", 261400)
    [hit] = [hit for hit in search("budesonide-formoterol mild asthma", k=5).hits
             if hit.pmid == "1001"]
    assert hit.text.startswith("A revised abstract")  # the index holds the new version


def test_a_file_its_blocker_never_released_is_queued_once_by_the_next_release(
        baseline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    update = _update(tmp_path, 1400, ASTHMA_REVISED)
    run = ingest_paths([baseline, update], use_celery=True)
    baseline_row, update_row = _file_row(run, baseline), _file_row(run, update)
    ingest_file_task.apply(args=[update_row.pk])
    # The baseline's worker died after marking it done, before queueing the update.
    IngestFile.objects.filter(pk=baseline_row.pk).update(status=IngestFile.Status.DONE)
    queued: list[int] = []
    monkeypatch.setattr(services, "ingest_file_enqueue", lambda row: queued.append(row.pk))

    assert services.release_waiting_files() == [update_row.pk]  # e.g. from the reconciler
    assert services.release_waiting_files() == []

    assert queued == [update_row.pk]
    update_row.refresh_from_db()
    assert (update_row.status, update_row.waiting_for) == (IngestFile.Status.PENDING, "")


def test_an_in_process_ingest_reads_its_files_in_nlm_order(baseline: Path,
                                                            tmp_path: Path) -> None:
    update = _update(tmp_path, 1400, ASTHMA_REVISED)

    run = ingest_paths([update, baseline])

    assert _file_row(run, baseline).created == 2 and _file_row(run, update).updated == 1
    assert Article.objects.get(pmid="1001").title.endswith("(revised)")


# --- per-PMID versions --------------------------------------------------------------------


def test_an_update_read_before_the_baseline_keeps_its_version(baseline: Path,
                                                              tmp_path: Path) -> None:
    ingest_paths([_update(tmp_path, 1400, ASTHMA_REVISED)])

    run = ingest_paths([baseline])

    report = run.files.get()
    assert (report.status, report.created, report.updated, report.skipped) == \
        (IngestFile.Status.DONE, 1, 0, 1)
    assert report.issues == {OLDER_THAN_STORED: 1}
    assert Article.objects.get(pmid="1001").title.endswith("(revised)")
    assert Article.objects.get(pmid="1002").source_sequence == 260001


def test_an_older_record_after_a_newer_one_does_not_overwrite_it(baseline: Path,
                                                                 tmp_path: Path) -> None:
    ingest_paths([baseline])
    ingest_paths([_update(tmp_path, 1400, ASTHMA_REVISED)])

    late = ingest_paths([_update(tmp_path, 1399, ASTHMA_INTERIM)]).files.get()

    assert (late.updated, late.skipped, late.issues) == (0, 1, {OLDER_THAN_STORED: 1})
    asthma = Article.objects.get(pmid="1001")
    assert (asthma.title, asthma.source_file) == (
        "Budesonide-formoterol reliever therapy in mild asthma (revised)",
        "pubmed26n1400.xml.gz")
    assert asthma.chunks.get().text.startswith("A revised abstract")


def test_a_deletion_read_before_the_baseline_stays_deleted(baseline: Path,
                                                           tmp_path: Path) -> None:
    deletion = ingest_paths([_update(tmp_path, 1400, delete_xml("1002"))]).files.get()
    assert deletion.issues == {"deletion of a PMID not in the database": 1}

    run = ingest_paths([baseline])

    report = run.files.get()
    assert (report.created, report.skipped, report.issues) == (1, 1, {OLDER_THAN_DELETION: 1})
    assert not Article.objects.filter(pmid="1002").exists()
    assert ArticleTombstone.objects.get(pmid="1002").source_sequence == 261400
    hits = search("thrombectomy after ischemic stroke", k=5).hits
    assert "1002" not in [hit.pmid for hit in hits]
    assert get_index().size == Chunk.objects.count()


def test_a_deletion_after_the_record_removes_it_and_a_later_record_brings_it_back(
        baseline: Path, tmp_path: Path) -> None:
    ingest_paths([baseline])
    ingest_paths([_update(tmp_path, 1400, delete_xml("1002"))])
    assert "1002" not in [hit.pmid for hit in search("thrombectomy stroke", k=5).hits]

    ingest_paths([_update(tmp_path, 1401, STROKE)])  # PubMed restored it later

    assert Article.objects.get(pmid="1002").source_sequence == 261401
    assert not ArticleTombstone.objects.filter(pmid="1002").exists()
    assert search("thrombectomy after ischemic stroke", k=1).hits[0].pmid == "1002"


def test_a_newer_version_without_abstract_is_not_undone_by_the_baseline(
        baseline: Path, tmp_path: Path) -> None:
    ingest_paths([baseline])
    ingest_paths([_update(tmp_path, 1400, ASTHMA_WITHOUT_ABSTRACT, NO_ABSTRACT)])
    assert not Article.objects.filter(pmid="1001").exists()

    ingest_paths([baseline])

    assert not Article.objects.filter(pmid="1001").exists()
    assert ArticleTombstone.objects.get(pmid="1001").reason == \
        ArticleTombstone.Reason.NO_ABSTRACT
    # A PMID never stored gets no tombstone for its record without abstract.
    assert list(ArticleTombstone.objects.values_list("pmid", flat=True)) == ["1001"]


def test_a_file_that_meets_another_on_a_pmid_mid_batch_does_not_fail(
        baseline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The older file stores the PMIDs between the newer file's read and its write (what two
    workers racing do); the newer file updates them instead of failing on the unique PMID."""
    newer = _update(tmp_path, 1400, ASTHMA_REVISED, STROKE)
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING)
    newer_row, older_row = (
        IngestFile.objects.create(run=run, path=str(path), format="pubmed-xml",
                                  sequence=file_sequence(path)) for path in (newer, baseline))
    real_chunk = article_store._chunk

    def older_file_lands_meanwhile(records: list[Any]) -> Any:
        if records and older_row.pk not in done:
            done.add(older_row.pk)
            services.ingest_file_by_id(older_row.pk)
        return real_chunk(records)

    done: set[int] = set()
    monkeypatch.setattr(article_store, "_chunk", older_file_lands_meanwhile)

    services.ingest_file_by_id(newer_row.pk)

    newer_row.refresh_from_db()
    older_row.refresh_from_db()
    assert (older_row.status, older_row.created) == (IngestFile.Status.DONE, 2)
    assert (newer_row.status, newer_row.error, newer_row.updated, newer_row.unchanged) == \
        (IngestFile.Status.DONE, "", 1, 1)
    assert Article.objects.get(pmid="1001").title.endswith("(revised)")
    assert set(Article.objects.values_list("pmid", "source_sequence")) == {
        ("1001", 261400), ("1002", 261400)}


@pytest.mark.django_db(transaction=True)
def test_two_files_sharing_pmids_ingested_at_once_both_finish(
        tmp_path: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "ARTICLE_BATCH", 3)  # many small batches that interleave
    pmids = [str(3000 + i) for i in range(12)]

    def version(pmid: str, label: str) -> str:
        return article_xml(pmid, f"Trial {pmid} ({label})",
                           [("", f"Report {pmid} of the {label} record: aspirin and stroke.")])

    older = _update(tmp_path, 1401, *[version(pmid, "older") for pmid in pmids])
    newer = _update(tmp_path, 1402, *[version(pmid, "newer") for pmid in reversed(pmids)])
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING)
    rows = [IngestFile.objects.create(run=run, path=str(path), format="pubmed-xml",
                                      sequence=file_sequence(path)) for path in (older, newer)]
    start = threading.Barrier(len(rows))
    errors: list[BaseException] = []

    def worker(file_id: int) -> None:
        try:
            start.wait()
            services.ingest_file_by_id(file_id)
        except BaseException as error:  # noqa: B036  (reported by the assertion below)
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(row.pk,)) for row in rows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    for row in rows:
        row.refresh_from_db()
        assert (row.status, row.error) == (IngestFile.Status.DONE, "")
    assert sorted(Article.objects.values_list("title", flat=True)) == \
        sorted(f"Trial {pmid} (newer)" for pmid in pmids)
    assert Chunk.objects.count() == len(pmids)
    assert not Article.objects.filter(source_sequence__lt=0).exists()  # no placeholder left
