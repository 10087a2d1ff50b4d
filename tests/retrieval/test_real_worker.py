"""`manage.py ingest --celery` against a real Celery worker: the worker does the work, this
process (like a running web server) picks up the index the worker built, without a restart."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from retrieval.models import Article, IngestFile, IngestRun
from retrieval.search import search
from retrieval.services import ingest_paths
from tests.conftest import subprocess_env
from tests.retrieval.pubmed_xml import ASTHMA, DIABETES_OLD, NO_ABSTRACT, STROKE, document, write

# Committed rows, so that the worker and the command (other processes) see them.
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

REPORT = re.compile(r"^(?P<name>\S+): (?P<status>\w+); (?P<read>\d+) read, (?P<new>\d+) new, "
                    r"0 updated, 0 unchanged, 0 deleted, (?P<skipped>\d+) skipped, "
                    r"(?P<chunks>\d+) chunks embedded", re.MULTILINE)


def _clear_queue() -> None:
    """Drop messages (and unacknowledged ones) left in this Redis database by earlier runs."""
    from config.celery import app

    app.control.purge()
    with app.connection_for_write() as connection:
        connection.default_channel.client.delete("unacked", "unacked_index")


def _task_lines(log: str, task: str, event: str) -> int:
    return sum(1 for line in log.splitlines() if f"{task}[" in line and event in line)


def test_ingest_with_celery_runs_each_file_on_a_real_worker_and_the_index_reaches_this_process(
        tmp_path: Path, index_dir: Path, start_worker: Any) -> None:
    # This process has an index loaded already, as a running web server would.
    seed = ingest_paths([write(tmp_path / "seed.xml", document(DIABETES_OLD))])
    before = search("metformin lactic acidosis in type 2 diabetes", k=5)
    assert before.index_version == seed.index_version
    assert {hit.pmid for hit in before.hits} == {"1004"}

    _clear_queue()
    worker = start_worker("ingest", INDEX_DIR=str(index_dir))
    first = write(tmp_path / "asthma.xml", document(ASTHMA))
    second = write(tmp_path / "stroke.xml.gz", document(STROKE, NO_ABSTRACT))
    command = subprocess.run(
        [sys.executable, "manage.py", "ingest", str(first), str(second), "--celery",
         "--no-progress"],
        cwd=settings.BASE_DIR, env=subprocess_env(INDEX_DIR=str(index_dir)),
        capture_output=True, text=True, timeout=150)
    log = worker.log_path.read_text()
    assert command.returncode == 0, f"{command.stdout}\n{command.stderr}\n{log[-3000:]}"

    run = IngestRun.objects.exclude(pk=seed.pk).get()
    assert run.use_celery and run.status == IngestRun.Status.COMPLETE and not run.error
    assert run.index_version and run.index_version != seed.index_version
    files = {Path(f.path).name: f for f in run.files.all()}
    assert set(files) == {"asthma.xml", "stroke.xml.gz"}
    assert all(f.status == IngestFile.Status.DONE and f.bytes_done == f.bytes_total
               for f in files.values())
    assert (files["asthma.xml"].articles_read, files["asthma.xml"].created) == (1, 1)
    assert (files["stroke.xml.gz"].articles_read, files["stroke.xml.gz"].created,
            files["stroke.xml.gz"].skipped) == (2, 1, 1)
    assert files["stroke.xml.gz"].issues == {"no abstract": 1}
    assert set(Article.objects.values_list("pmid", flat=True)) == {"1001", "1002", "1004"}

    # The command waited for the worker, then reported each file and the run.
    assert f"queued 2 file(s) as Celery tasks (run {run.pk})" in command.stdout
    reports = {m["name"]: m for m in REPORT.finditer(command.stdout)}
    assert set(reports) == set(files), command.stdout
    for name, report in reports.items():
        row = files[name]
        assert report["status"] == "done"
        assert (int(report["read"]), int(report["new"]), int(report["skipped"]),
                int(report["chunks"])) == (row.articles_read, row.created, row.skipped,
                                           row.chunks_embedded)
        assert row.chunks_embedded >= 1
    assert "[no abstract: 1]" in command.stdout
    assert f"ingest run {run.pk} (complete): 2 file(s), 3 records read, 2 new" in command.stdout
    assert f"index {run.index_version}" in command.stdout

    # Each file was one task on the worker, and the worker built the index.
    assert _task_lines(log, "retrieval.tasks.ingest_file_task", "received") == 2, log[-3000:]
    assert _task_lines(log, "retrieval.tasks.ingest_file_task", "succeeded in") == 2, log[-3000:]
    assert _task_lines(log, "retrieval.tasks.build_index_task", "succeeded in") >= 1
    assert (index_dir / "versions" / run.index_version).is_dir()

    # This process swaps in the worker's index on its next search.
    asthma = search("as-needed budesonide-formoterol in mild asthma", k=3)
    assert asthma.index_version == run.index_version
    assert asthma.hits[0].pmid == "1001"
    stroke = search("thrombectomy for large-vessel occlusion late after stroke", k=3)
    assert stroke.hits[0].pmid == "1002"
    assert "1004" in {hit.pmid for hit in search("metformin lactic acidosis", k=3).hits}
