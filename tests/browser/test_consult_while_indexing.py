"""A deep consult starts within seconds while a real MEDLINE file is indexing (issue 18).

The two workers `./run` starts: one on the interactive queue (deep consults), one on the bulk
queue (ingest, exports, evaluation). A baseline file from ../shared/data/pubmed is queued with
`manage.py ingest --celery`, as the product does for the files it indexes in the background;
while the bulk worker is busy with it, a clinician asks a deep consult in Debian's Chromium.
The consult must leave "Waiting" and show its first step within seconds (the old single worker
left it waiting behind the file), and the ingest must go on storing articles under the same
claim, without an error.

Real web server (uvicorn), real Celery workers, real Redis, a real index over the synthetic
articles; the model server is a scripted double whose first reply is slow, so that the consult
is still under way when the test looks at it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command

from clinic.models import Consultation
from retrieval.models import IngestFile, IngestRun
from tests.modelsvc.doubles import ModelServerDouble, Reply

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.shared_data]
PASSWORD = "correct-horse-battery"
# A 2020 baseline file (about 30,000 citations): embedding it takes the bulk worker far longer
# than this test runs.
MEDLINE_FILE = "pubmed20n0014.xml.gz"
QUESTION = "Does low-dose aspirin prevent recurrent ischemic stroke?"
PLAN = Reply(stream=[f'["{QUESTION}"]'], first_delay=5.0)
STARTS_WITHIN_S = 10.0


@pytest.fixture
def model_double(settings: Any) -> Iterator[ModelServerDouble]:
    """Set before the workers start, which inherit its address."""
    double = ModelServerDouble([PLAN]).__enter__()
    settings.MODEL_BASE_URL = double.base_url
    settings.MODEL_MAX_RETRIES = 0
    yield double
    double.__exit__(None, None, None)


def _wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _clear_queue() -> None:
    """Drop messages (and unacknowledged ones) left in this Redis database by earlier runs."""
    from config.celery import app

    app.control.purge()
    with app.connection_for_write() as connection:
        connection.default_channel.client.delete("unacked", "unacked_index")


def _kill(worker: Any) -> None:
    """A worker stopped warmly would first finish its job (the bulk one, the whole file); its
    unacknowledged message is purged afterwards, so that no later test's worker picks it up."""
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=15)


def test_a_deep_consult_starts_within_seconds_while_medline_indexes(
        browser: Any, tiny_index: Path, shared_data_dir: Path, asgi_live_server: str,
        model_double: ModelServerDouble, start_worker: Any, artifacts_dir: Path) -> None:
    medline = shared_data_dir / "pubmed" / MEDLINE_FILE
    if not medline.is_file():
        pytest.skip(f"{medline} not found; it is part of the reference data")
    base = asgi_live_server
    user = User.objects.create_user(username="dr_busy", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name="clinician")[0])

    _clear_queue()
    workers = [start_worker("bulk", queues=django_settings.BULK_QUEUE)]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        call_command("ingest", str(medline), "--celery", "--no-wait", "--no-progress",
                     stdout=StringIO())
        ingest_file = IngestFile.objects.get(path=str(medline.resolve()))
        # Started while the bulk worker opens the file, as `./run` starts both.
        workers.append(start_worker("interactive", queues=django_settings.INTERACTIVE_QUEUE))
        bulk, interactive = workers
        page = context.new_page()
        page.goto(f"{base}/accounts/login/")
        page.fill("#id_username", "dr_busy")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        _wait_until(lambda: IngestFile.objects.get(pk=ingest_file.pk).status
                    == IngestFile.Status.RUNNING, 60, f"the bulk worker to claim {MEDLINE_FILE}")
        page.click("nav >> text=Literature")
        page.wait_for_url(f"{base}/literature/")
        assert MEDLINE_FILE in page.inner_text("#indexing")

        page.click("nav >> text=Ask")
        page.wait_for_url(f"{base}/")
        page.fill("#id_question", QUESTION)
        before_asking = IngestFile.objects.get(pk=ingest_file.pk)
        asked = time.monotonic()
        page.click("#ask-deep")
        page.wait_for_url(f"{base}/consultations/*/")
        while not page.inner_text("#stage").startswith("Step "):
            assert time.monotonic() - asked < STARTS_WITHIN_S, (
                f"the deep consult still says {page.inner_text('#status-badge')!r} "
                f"({page.inner_text('#stage')!r}) {STARTS_WITHIN_S:.0f} s after it was asked, "
                f"while {MEDLINE_FILE} indexes")
            time.sleep(0.1)
        started_after = time.monotonic() - asked
        assert IngestFile.objects.get(pk=ingest_file.pk).status == IngestFile.Status.RUNNING
        assert page.inner_text("#status-badge") != "Waiting"
        consultation = Consultation.objects.get(question=QUESTION)
        assert consultation.status == Consultation.Status.RUNNING
        page.screenshot(path=str(artifacts_dir / "deep-consult-while-indexing.png"),
                        full_page=True)

        # It runs on the interactive worker; the bulk worker never took it.
        assert "clinic.tasks.run_deep_consult[" in interactive.log_path.read_text()
        assert "clinic.tasks.run_deep_consult[" not in bulk.log_path.read_text()

        # The ingest goes on undisturbed: the same claim, a live heartbeat, no error.
        after = IngestFile.objects.get(pk=ingest_file.pk)
        assert after.status == IngestFile.Status.RUNNING and after.error == ""
        assert after.claim_token == before_asking.claim_token
        assert IngestFile.objects.with_live_owner().filter(pk=ingest_file.pk).exists()
        assert after.articles_read >= before_asking.articles_read
        assert after.run.status == IngestRun.Status.RUNNING
        print(f"deep consult started {started_after:.1f} s after it was asked; "
              f"{MEDLINE_FILE}: {before_asking.articles_read} then {after.articles_read} "
              "articles read")
    finally:
        context.close()
        for worker in workers:
            _kill(worker)
        _clear_queue()
