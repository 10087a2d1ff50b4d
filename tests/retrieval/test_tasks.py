"""Celery fan-out: one task per file, one index build after the last file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.celery import app
from retrieval import services
from retrieval.models import Article, IngestFile, IngestRun
from retrieval.search import search
from retrieval.services import ingest_paths
from retrieval.tasks import build_index_task, ingest_file_task
from tests.retrieval.pubmed_xml import ASTHMA, DIABETES_OLD, STROKE, document, write

pytestmark = pytest.mark.django_db


@pytest.fixture
def eager_celery() -> Iterator[None]:
    saved = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = saved


def test_each_file_is_a_task_and_the_index_is_built_once_after_the_last(
        tmp_path: Path, index_dir: Path, eager_celery: None,
        django_capture_on_commit_callbacks: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []
    real_build = services.build_index
    monkeypatch.setattr(services, "build_index",
                        lambda **kw: builds.append(1) or real_build(**kw))
    first = write(tmp_path / "a.xml", document(ASTHMA))
    second = write(tmp_path / "b.xml.gz", document(STROKE, DIABETES_OLD))

    with django_capture_on_commit_callbacks(execute=True):
        run = ingest_paths([first, second], use_celery=True)

    run.refresh_from_db()
    assert run.status == IngestRun.Status.COMPLETE
    assert builds == [1]
    assert list(run.files.values_list("status", flat=True)) == [IngestFile.Status.DONE] * 2
    assert Article.objects.count() == 3
    assert search("metformin lactic acidosis", k=1).hits[0].pmid == "1004"


def test_a_redelivered_task_does_no_work_twice(tmp_path: Path, index_dir: Path) -> None:
    path = write(tmp_path / "a.xml", document(ASTHMA))
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING, use_celery=True)
    ingest_file = IngestFile.objects.create(run=run, path=str(path), format="pubmed-xml",
                                            bytes_total=path.stat().st_size)

    ingest_file_task.apply(args=[ingest_file.pk])
    ingest_file_task.apply(args=[ingest_file.pk])  # e.g. acks_late redelivery
    build_index_task.apply(args=[run.pk])

    ingest_file.refresh_from_db()
    run.refresh_from_db()
    assert (ingest_file.created, ingest_file.chunks_embedded) == (1, 1)
    assert run.status == IngestRun.Status.COMPLETE and run.index_version


def test_a_task_for_a_deleted_file_row_is_dropped(index_dir: Path) -> None:
    ingest_file_task.apply(args=[987654])
    assert not IngestRun.objects.exists()


def test_the_admin_shows_a_progress_line_per_run(client: Any, admin_user: Any,
                                                 index_dir: Path) -> None:
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING, use_celery=True)
    IngestFile.objects.create(run=run, path="/data/a.xml.gz", format="pubmed-xml",
                              status=IngestFile.Status.DONE, bytes_total=100, bytes_done=100,
                              articles_read=7, skipped=2)
    IngestFile.objects.create(run=run, path="/data/b.xml.gz", format="pubmed-xml",
                              bytes_total=300, bytes_done=0)
    client.force_login(admin_user)

    listing = client.get("/admin/retrieval/ingestrun/")
    detail = client.get(f"/admin/retrieval/ingestrun/{run.pk}/change/")

    assert listing.status_code == 200
    assert "1/2 files, 25% of bytes, 7 records read, 2 skipped; Ingesting files" in \
        listing.content.decode()
    assert detail.status_code == 200 and "/data/b.xml.gz" in detail.content.decode()
