"""A deep consult's endings in a real browser: a failure then Retry to completion, a Cancel mid-
draft that takes effect within seconds; the status, progress and evidence card tell the truth.

Real web server (uvicorn), real Celery worker, real Redis, Debian's Chromium; the model server
is a scripted double so that the failure and the slow draft happen when the test needs them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User

from clinic.models import Consultation
from tests.modelsvc.doubles import ModelServerDouble, Reply

pytestmark = [pytest.mark.browser, pytest.mark.redis]
PASSWORD = "correct-horse-battery"
QUESTION = "Does low-dose aspirin prevent recurrent ischemic stroke?"
PLAN = Reply(stream=['["Does low-dose aspirin prevent recurrent ischemic stroke?"]'])
ANSWER = Reply(stream=["Low-dose aspirin reduced recurrent ischemic stroke by 22% [1]."])


@pytest.fixture
def model_double(settings: Any) -> Iterator[Any]:
    def start(replies: list[Reply]) -> ModelServerDouble:
        double = ModelServerDouble(replies).__enter__()
        started.append(double)
        settings.MODEL_BASE_URL = double.base_url  # the worker started after this uses it
        return double

    started: list[ModelServerDouble] = []
    yield start
    for double in started:
        double.__exit__(None, None, None)


def _ask_deep(browser: Any, base: str) -> Any:
    user = User.objects.create_user(username="dr_deep", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name="clinician")[0])
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "dr_deep")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    page.fill("#id_question", QUESTION)
    page.click("#ask-deep")
    page.wait_for_url(f"{base}/consultations/*/")
    return page


def _wait_for_badge(page: Any, labels: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        label = page.inner_text("#status-badge")
        if label in labels:
            return str(label)
        time.sleep(0.2)
    raise AssertionError(f"status stayed {page.inner_text('#status-badge')!r}, "
                         f"expected one of {labels}")


def _progress(page: Any) -> tuple[int, int]:
    value, maximum = page.eval_on_selector("#progress", "p => [p.value, p.max]")
    return int(value), int(maximum)


def test_a_failed_deep_consult_says_what_to_do_and_retry_finishes_it(
        browser: Any, tiny_index: Path, asgi_live_server: str, start_worker: Any,
        model_double: Any, artifacts_dir: Path) -> None:
    context_error = Reply(status=400, body={"error": {"message": "This model's maximum context "
                                                      "length is 2048 tokens"}})
    model_double([PLAN, context_error, ANSWER])
    start_worker("deep-paths")
    page = _ask_deep(browser, asgi_live_server)

    _wait_for_badge(page, {"Failed"}, 120)
    page.screenshot(path=str(artifacts_dir / "deep-consult-failed.png"), full_page=True)
    assert "press Retry" in page.inner_text("#error")
    done, total = _progress(page)
    assert done == 2 and total == 6  # plan and retrieve ran; the bar is not full
    assert "Searching" not in page.inner_text(".evidence-card")
    assert page.is_visible("#retry") and not page.is_visible("#cancel")
    statuses = page.eval_on_selector_all("#steps li", "items => items.map(i => i.dataset.status)")
    assert statuses[:3] == ["done", "done", "failed"]
    assert set(statuses[3:]) == {"not reached"}

    page.click("#retry")
    label = _wait_for_badge(page, {"Answered", "Answer withheld", "Failed"}, 120)
    page.screenshot(path=str(artifacts_dir / "deep-consult-retried.png"), full_page=True)

    assert label in {"Answered", "Answer withheld"}, page.inner_text("#error")
    done, total = _progress(page)
    assert done == total
    statuses = page.eval_on_selector_all("#steps li", "items => items.map(i => i.dataset.status)")
    assert "not reached" not in statuses and "failed" not in statuses
    consultation = Consultation.objects.get()
    assert consultation.status == "complete" and consultation.claimed_by == ""
    assert consultation.steps.get(kind="plan").output["sub_questions"] == [QUESTION]

    page.goto(f"{asgi_live_server}/history/")
    assert page.inner_text(".history .badge") == label


def test_cancel_during_the_draft_takes_effect_within_seconds(
        browser: Any, tiny_index: Path, asgi_live_server: str, start_worker: Any,
        model_double: Any, artifacts_dir: Path) -> None:
    slow_draft = Reply(stream=[f"Aspirin helps{i} [1]. " for i in range(600)], chunk_delay=0.2)
    double = model_double([PLAN, slow_draft])
    start_worker("deep-cancel")
    page = _ask_deep(browser, asgi_live_server)

    deadline = time.monotonic() + 120
    while "tokens written" not in page.inner_text("#steps"):
        assert time.monotonic() < deadline, page.inner_text("#steps")
        time.sleep(0.2)
    assert page.inner_text("#status-badge") == "Writing"
    page.screenshot(path=str(artifacts_dir / "deep-consult-drafting.png"), full_page=True)

    clicked = time.monotonic()
    page.click("#cancel")
    _wait_for_badge(page, {"Cancelled"}, 5)
    assert time.monotonic() - clicked < 5
    assert double.client_hung_up.wait(10)  # the worker stopped the model's generation
    page.screenshot(path=str(artifacts_dir / "deep-consult-cancelled.png"), full_page=True)

    done, total = _progress(page)
    assert done == 2 and total == 6
    assert page.is_visible("#retry") and not page.is_visible("#cancel")
    consultation = Consultation.objects.get()
    assert consultation.status == "cancelled"
    assert consultation.steps.get(kind="draft").output["cancelled"]
    assert django_settings.DEEP_CONSULT_MAX_ATTEMPTS >= consultation.attempts == 1
