"""A clinician's first hour, in order, in one browser session (issue 17): first run, browsing
and searching the literature, three quick questions (one answered with titled, cited evidence,
one withheld with why and what to do, one answered), History, a deep consult to completion, a
deep consult that fails and is retried to completion, a deep consult cancelled while it writes,
then the consultation pages and History again on a phone, with nothing wider than the screen.

Real web server (uvicorn), real Celery worker, real Redis, a real index over the synthetic
titled articles, Debian's Chromium. The model server is one scripted double shared by the web
process and the worker (each stage arranges its replies), and the quick answers' claims are
judged by the verification engine double (tests/clinic/verifier_double.py), so that each
question ends the way the stage needs. Each stage saves a screenshot to
test-artifacts/first-hour/ and asserts what the page says.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from clinic.models import Consultation
from clinic.status import CANCELLED_DEEP
from tests.clinic.verifier_double import verifier_double  # noqa: F401  (a fixture)
from tests.modelsvc.doubles import ModelServerDouble, Reply

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.usefixtures("verifier_double")]
PASSWORD = "correct-horse-battery"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
FINISHED = {"Answered", "Answer withheld", "Failed", "Cancelled"}

ASPIRIN = "Does low-dose aspirin prevent recurrent ischemic stroke?"
ASPIRIN_TITLE = "Low-dose aspirin for secondary prevention of ischemic stroke"
METFORMIN = "Does metformin cure chronic kidney disease?"
STATINS = "Do statins cause the muscle symptoms patients report?"
VITAMIN_D = "Should older adults take vitamin D to prevent fractures?"
MOBILISATION = "Does early mobilisation after hip fracture surgery shorten the hospital stay?"
DEEP_ASPIRIN = "Which dose of aspirin prevents a second ischemic stroke, and at what bleeding risk?"

SUB_QUESTION = "Does vitamin D prevent fractures in older adults?"
PLAN = Reply(stream=[f'["{SUB_QUESTION}"]'])
# The first deep consult's plan waits a little for its first token, so that the page (polling
# every second) shows the step under way.
SLOW_PLAN = Reply(stream=PLAN.stream, first_delay=2.0)
DRAFT = Reply(stream=["Vitamin D alone did not reduce hip or non-vertebral fractures ",
                      "in adults over 65 [1]."])


def _words(text: str) -> Reply:
    return Reply(stream=[word + " " for word in text.split()], chunk_delay=0.02)


@pytest.fixture
def model_double(settings: Any) -> Iterator[Any]:
    """One scripted model server for the whole hour; `arrange(*replies)` sets what the next
    requests get (the last reply repeats). Set before the worker starts, which inherits it."""
    double = ModelServerDouble([_words("unused")]).__enter__()
    settings.MODEL_BASE_URL = double.base_url
    settings.MODEL_MAX_RETRIES = 0

    def arrange(*replies: Reply) -> ModelServerDouble:
        # Called only between stages, when no request is in flight.
        double.requests.clear()
        double.replies = list(replies)
        double.client_hung_up.clear()
        return double

    yield arrange
    double.__exit__(None, None, None)


def _badge(page: Any) -> str:
    return str(page.inner_text("#status-badge"))


def _wait_for_badge(page: Any, labels: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout  # polled from here: the page's CSP forbids eval
    while time.monotonic() < deadline:
        label = _badge(page)
        if label in labels:
            return label
        time.sleep(0.1)
    raise AssertionError(f"status stayed {_badge(page)!r} (expected one of {sorted(labels)}): "
                         f"{page.inner_text('#status')} {page.inner_text('#error')}")


def _ask(page: Any, base: str, question: str, *, deep: bool = False) -> int:
    page.goto(f"{base}/")
    page.fill("#id_question", question)
    page.click("#ask-deep" if deep else "#ask-quick")
    page.wait_for_url(f"{base}/consultations/*/")
    match = re.search(r"/consultations/(\d+)/$", page.url)
    assert match, page.url
    return int(match.group(1))


def _progress(page: Any) -> tuple[int, int]:
    value, maximum = page.eval_on_selector("#progress", "p => [p.value, p.max]")
    return int(value), int(maximum)


def _step_labels(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#steps li", "items => items.map(i => i.dataset.status)"))


def _rows(page: Any, selector: str) -> dict[str, tuple[str, str]]:
    """question -> (badge label, badge title) for each row of a History-like list."""
    rows = page.eval_on_selector_all(selector, """items => items.map(li => {
        const badge = li.querySelector('.badge');
        return [li.querySelector('a').textContent, badge.textContent, badge.title];
    })""")
    return {question: (label, title) for question, label, title in rows}


def _no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{page.url} is {width} px wide on a {PHONE['width']} px phone"


def test_a_clinicians_first_hour(
        browser: Any, tiny_index: Path, asgi_live_server: str, model_double: Any,
        start_worker: Any, artifacts_dir: Path) -> None:
    base = asgi_live_server
    shots = artifacts_dir / "first-hour"
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()

    def shot(page: Any, name: str) -> None:
        path = shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000

    user = User.objects.create_user(username="dr_new", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name="clinician")[0])
    # The worker inherits the model double's address; its claim checks use the lexical engine
    # whatever verifier VAR_DIR holds, so that the deep consults' verdicts are always the same.
    start_worker("first-hour", VERIFIER_ENGINE="lexical")
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()

    # --- 1. First run: log in to an empty ask page and an empty History. ----------------------
    page.goto(f"{base}/")
    assert page.url.startswith(f"{base}/accounts/login/"), page.url  # sent to log in first
    page.fill("#id_username", "dr_new")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    assert page.inner_text("h1") == "Ask a clinical question"
    assert page.is_visible("#ask-quick") and page.is_visible("#ask-deep")
    assert "Recent" not in page.inner_text("main")
    shot(page, "01-first-run-ask")
    page.click("nav >> text=History")
    page.wait_for_url(f"{base}/history/")
    assert "No consultations yet" in page.inner_text("main")

    # --- 2. The literature: what is indexed, browse it, search it. ----------------------------
    page.click("nav >> text=Literature")
    page.wait_for_url(f"{base}/literature/")
    assert page.inner_text("#article-count") == "6"
    assert int(page.inner_text("#chunk-count")) >= 6
    assert page.locator("#indexing").count() == 0
    assert "Nothing is indexing now" in page.inner_text("#literature-status")
    articles = page.locator("#articles li")
    assert articles.count() == 6
    assert "Statins and muscle symptoms" in articles.first.inner_text()  # newest first
    assert "Synthetic Cardiology · 2022 · Randomized Controlled Trial · PMID 90000004" \
        in articles.first.inner_text()
    shot(page, "02-literature-browse")
    page.fill("#q", "aspirin recurrent stroke")
    page.click("form.search button[type=submit]")
    page.wait_for_selector("#results")
    first = page.locator("#results li").first
    assert ASPIRIN_TITLE in first.inner_text()
    assert "Synthetic Neurology · 2019 · Meta-Analysis · PMID 90000001" in first.inner_text()
    assert first.locator("a").get_attribute("href") == "https://pubmed.ncbi.nlm.nih.gov/90000001/"
    shot(page, "03-literature-search")

    # --- 3. Three quick questions. -------------------------------------------------------------
    # (a) On a demo-corpus topic: answered, each claim citing a titled article.
    double = model_double(_words("Low-dose aspirin reduced recurrent ischemic stroke by 22% "
                                 "[1]. It modestly increased major bleeding [1]."))
    aspirin_id = _ask(page, base, ASPIRIN)
    assert _wait_for_badge(page, FINISHED, 60) == "Answered", page.inner_text("#error")
    assert ASPIRIN in double.requests[0]["messages"][-1]["content"]
    evidence = page.locator("#passage-1")
    link = evidence.locator("a").first
    assert link.inner_text() == ASPIRIN_TITLE
    assert link.get_attribute("href") == "https://pubmed.ncbi.nlm.nih.gov/90000001/"
    assert "Synthetic Neurology · 2019 · Meta-Analysis · PMID 90000001" in evidence.inner_text()
    claims = page.locator("#answer .claim")
    assert claims.count() == 2
    assert "Low-dose aspirin reduced recurrent ischemic stroke by 22%" in claims.first.inner_text()
    assert claims.first.get_attribute("data-verdict") == "supported"
    cite = claims.first.locator("button.cite")
    assert cite.inner_text() == "[1]"
    cite.click()
    assert page.is_visible("#passage-view")
    assert page.inner_text("#passage-view-title") == f"[1] {ASPIRIN_TITLE} (PMID 90000001)"
    assert "Aspirin reduced recurrent ischemic stroke by 22%" in \
        page.inner_text("#passage-view-text")
    assert "highlight" in (evidence.get_attribute("class") or "")
    assert "of claims supported" in page.inner_text("#answer-meta")
    assert page.is_visible("#feedback-card")
    shot(page, "04-quick-answered-with-citations")

    # (b) A draft its passages do not support: withheld, with why and what to do.
    model_double(_words("Metformin cures chronic kidney disease [1]."))
    metformin_id = _ask(page, base, METFORMIN)
    assert _wait_for_badge(page, FINISHED, 60) == "Answer withheld", page.inner_text("#error")
    assert page.is_visible("#withheld")
    message = page.inner_text("#withheld-message")
    assert "only 0 of its 1 statements were supported" in message
    assert "Rephrase the question" in message and "deep consult" in message
    assert page.is_visible("#rephrase") and page.is_visible("#suggest-deep")
    assert page.inner_text("#answer").strip() == "" and "cures" not in page.content()
    assert page.locator("#evidence li").count() >= 1  # what was found is still listed
    metformin = Consultation.objects.get(pk=metformin_id)
    assert metformin.abstained and metformin.withheld_reason == "low_support"
    shot(page, "05-quick-withheld")

    # (c) Another demo-corpus question, answered.
    model_double(_words("Most muscle symptoms reported on statins also occurred on placebo "
                        "[1]."))
    statins_id = _ask(page, base, STATINS)
    assert _wait_for_badge(page, FINISHED, 60) == "Answered", page.inner_text("#error")
    assert "also occurred on placebo" in page.inner_text("#answer")
    assert not page.is_visible("#withheld") and not page.is_visible("#error")
    shot(page, "06-quick-answered")

    # History (and the ask page's Recent list) tell the truth about each one.
    page.click("nav >> text=History")
    page.wait_for_url(f"{base}/history/")
    rows = _rows(page, ".history li")
    assert [label for label, _ in rows.values()] == ["Answered", "Answer withheld", "Answered"]
    assert rows[STATINS][0] == "Answered" and rows[ASPIRIN][0] == "Answered"
    assert rows[METFORMIN] == ("Answer withheld",
                               "Too few statements supported by their citations.")
    shot(page, "07-history-quick")
    page.click("nav >> text=Ask")
    page.wait_for_url(f"{base}/")
    assert {q: label for q, (label, _) in _rows(page, ".history li").items()} == {
        STATINS: "Answered", METFORMIN: "Answer withheld", ASPIRIN: "Answered"}

    # --- 4. A deep consult, to completion. -----------------------------------------------------
    model_double(SLOW_PLAN, DRAFT)
    vitamin_id = _ask(page, base, VITAMIN_D, deep=True)
    seen_running = set()
    deadline = time.monotonic() + 120
    while (label := _badge(page)) not in FINISHED:
        assert time.monotonic() < deadline, f"the deep consult did not finish: {label}"
        stage = page.inner_text("#stage")
        if stage.startswith("Step "):
            done, total = _progress(page)
            seen_running.add((label, stage.split(":")[0], done < total))
        time.sleep(0.1)
    assert ("Writing", "Step 1 of 6", True) in seen_running, seen_running
    assert label == "Answered", page.inner_text("#error")
    vitamin = Consultation.objects.get(pk=vitamin_id)
    assert vitamin.status == "complete" and vitamin.claimed_by == ""
    assert vitamin.steps.get(kind="plan").output["sub_questions"] == [SUB_QUESTION]
    # The draft's claim is supported, so the revision is skipped and not counted.
    assert _step_labels(page) == ["done"] * 4 + ["skipped", "done"]
    assert _progress(page) == (5, 5)
    assert "did not reduce hip or non-vertebral fractures" in page.inner_text("#answer")
    assert page.locator("#answer .claim.supported button.cite").count() == 1
    assert "Vitamin D supplementation and fracture risk in older adults" in \
        page.inner_text("#evidence")
    shot(page, "08-deep-consult-finished")

    # --- 5. A deep consult fails on one step; Retry finishes it. -------------------------------
    context_error = Reply(status=400, body={"error": {"message": "This model's maximum context "
                                                      "length is 2048 tokens"}})
    model_double(PLAN, context_error, DRAFT)
    failing_id = _ask(page, base, MOBILISATION, deep=True)
    _wait_for_badge(page, {"Failed"}, 120)
    assert "press Retry" in page.inner_text("#error")
    assert _progress(page) == (2, 6)  # plan and retrieve ran; the bar is not full
    assert _step_labels(page) == ["done", "done", "failed"] + ["not reached"] * 3
    assert page.is_visible("#retry") and not page.is_visible("#cancel")
    assert "Searching" not in page.inner_text(".evidence-card")
    shot(page, "09-deep-consult-failed")
    page.click("#retry")
    label = _wait_for_badge(page, FINISHED, 120)
    assert label == "Answered", page.inner_text("#error")
    assert _step_labels(page) == ["done"] * 4 + ["skipped", "done"]
    assert _progress(page) == (5, 5)
    assert "did not reduce hip or non-vertebral fractures" in page.inner_text("#answer")
    assert Consultation.objects.get(pk=failing_id).status == "complete"
    shot(page, "10-deep-consult-retried")

    # --- 6. A deep consult cancelled while its draft is being written. -------------------------
    slow_draft = Reply(stream=[f"Aspirin helps{i} [1]. " for i in range(600)], chunk_delay=0.2)
    double = model_double(PLAN, slow_draft)
    cancelled_id = _ask(page, base, DEEP_ASPIRIN, deep=True)
    deadline = time.monotonic() + 120
    while "tokens written" not in page.inner_text("#steps"):
        assert time.monotonic() < deadline, page.inner_text("#steps")
        time.sleep(0.2)
    assert _badge(page) == "Writing"
    assert page.is_visible("#cancel") and not page.is_visible("#retry")
    shot(page, "11-deep-consult-writing")
    page.click("#cancel")
    _wait_for_badge(page, {"Cancelled"}, 15)
    assert page.inner_text("#stage") == CANCELLED_DEEP
    assert page.is_visible("#retry") and not page.is_visible("#cancel")
    assert _progress(page) == (2, 6)
    assert "cancelled" in _step_labels(page)
    assert double.client_hung_up.wait(10)  # the worker stopped the model's generation
    assert Consultation.objects.get(pk=cancelled_id).status == "cancelled"
    page.wait_for_selector("#no-answer", timeout=10_000)  # not an empty answer card
    assert "was cancelled" in page.inner_text("#answer")
    shot(page, "12-deep-consult-cancelled")

    # History: six consultations, newest first, each with its true status.
    page.click("nav >> text=History")
    page.wait_for_url(f"{base}/history/")
    rows = _rows(page, ".history li")
    assert list(rows) == [DEEP_ASPIRIN, MOBILISATION, VITAMIN_D, STATINS, METFORMIN, ASPIRIN]
    assert rows[DEEP_ASPIRIN] == ("Cancelled", CANCELLED_DEEP)
    assert [label for label, _ in rows.values()] == [
        "Cancelled", "Answered", "Answered", "Answered", "Answer withheld", "Answered"]
    shot(page, "13-history")

    # --- 7. On a phone: the consultation pages and History fit the screen. ---------------------
    page.set_viewport_size(PHONE)
    for pk in (aspirin_id, metformin_id, statins_id, vitamin_id, failing_id, cancelled_id):
        page.goto(f"{base}/consultations/{pk}/")
        _wait_for_badge(page, FINISHED, 10)
        _no_sideways_scroll(page)
    shot(page, "14-phone-consultation-cancelled")
    page.goto(f"{base}/consultations/{aspirin_id}/")
    _wait_for_badge(page, {"Answered"}, 10)
    _no_sideways_scroll(page)
    shot(page, "15-phone-consultation-answered")
    page.goto(f"{base}/history/")
    assert page.locator(".history li").count() == 6
    _no_sideways_scroll(page)
    shot(page, "16-phone-history")
    context.close()
