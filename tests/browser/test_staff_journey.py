"""Reviewers' and admins' journeys in a real browser (Debian's Chromium driven by Playwright).

A reviewer corrects an answer that entered the review queue on its own; an admin exports the
reviewed answers as training data and runs an evaluation suite, both on real Celery workers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from clinic.models import Claim, Consultation, Feedback, RetrievedPassage
from evaluation.models import EvalRun
from review.models import ExportBatch, ReviewDecision, ReviewItem
from review.services import (
    ClaimEdit,
    enqueue_for_review,
    review_item_claim,
    review_item_decide,
)

pytestmark = [pytest.mark.browser, pytest.mark.model_server]
PASSWORD = "correct-horse-battery"
EVAL_DATA = Path(__file__).parent.parent / "evaluation" / "data"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
PASSAGES = [
    ("90000001", "Low-dose aspirin for secondary prevention of ischemic stroke",
     "Aspirin reduced recurrent ischemic stroke by 22% and increased major bleeding modestly."),
    ("90000002", "Metformin use in chronic kidney disease stage 3",
     "Lactic acidosis was rare and not increased with metformin at reduced doses."),
]


# --- helpers ------------------------------------------------------------------------------

def _user(username: str, role: str, **extra: Any) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, **extra)
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def _log_in(browser: Any, base: str, username: str, path: str, *,
            mobile: bool = False) -> Any:
    """Open `path` logged out, get sent to the login form, log in, land back on `path`."""
    context = browser.new_context(viewport=PHONE if mobile else DESKTOP)
    page = context.new_page()
    page.goto(f"{base}{path}")
    assert page.url.startswith(f"{base}/accounts/login/?next="), page.url
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}{path}")
    return page


def _answered(clinician: User, question: str, *, unsupported: bool = True) -> Consultation:
    """An answered consultation stored the way the pipeline stores it."""
    consultation = Consultation.objects.create(
        user=clinician, question=question, status=Consultation.Status.COMPLETE,
        routed_model_name="smollm2-135m", routing_confidence=0.9, prompt_version="answer-v1",
        answer_text="Aspirin lowers recurrent stroke [1]. Metformin cures CKD 3 [2].")
    for rank, (pmid, title, text) in enumerate(PASSAGES, start=1):
        RetrievedPassage.objects.create(consultation=consultation, rank=rank, pmid=pmid,
                                        title=title, text=text, score=1.0 / rank, year=2020)
    Claim.objects.create(consultation=consultation, position=0, citations=[1], supported=True,
                         support_score=0.8, text="Aspirin lowers recurrent stroke.")
    Claim.objects.create(consultation=consultation, position=1, citations=[2],
                         supported=not unsupported, support_score=0.2 if unsupported else 0.8,
                         text="Metformin cures CKD 3.")
    return consultation


def _overflow(page: Any) -> tuple[int, int]:
    width, viewport = page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]")
    return int(width), int(viewport)


def _clear_queue() -> None:
    """Drop messages (and unacknowledged ones) left in this Redis database by earlier runs."""
    from config.celery import app

    app.control.purge()
    with app.connection_for_write() as connection:
        connection.default_channel.client.delete("unacked", "unacked_index")


def _succeeded(log_path: Path, task: str) -> int:
    return sum(1 for line in log_path.read_text().splitlines()
               if f"{task}[" in line and "succeeded in" in line)


@pytest.fixture
def benchmark_dir(tmp_path: Path, settings: Any) -> Path:
    """A LITERATURE_DATA_DIR holding only the two small benchmark files (synthetic)."""
    folder = tmp_path / "data"
    (folder / "pubmedqa").mkdir(parents=True)
    (folder / "exam").mkdir()
    shutil.copy(EVAL_DATA / "pubmedqa_synthetic.json", folder / "pubmedqa" / "pqal_dev.json")
    shutil.copy(EVAL_DATA / "mirage_synthetic.json", folder / "exam" / "mirage_medmcqa_mmlu.json")
    settings.LITERATURE_DATA_DIR = folder
    return folder


@pytest.fixture(autouse=True)
def review_settings(settings: Any) -> None:
    settings.REVIEW_SAMPLE_RATE = 0.0
    settings.REVIEW_REQUIRED_REVIEWS = 1
    settings.REVIEW_UNSAFE_REQUIRED_REVIEWS = 2
    settings.REVIEW_CLAIM_MINUTES = 30


# --- a reviewer corrects a queued answer ---------------------------------------------------

def test_a_reviewer_claims_a_queued_answer_and_corrects_a_claim(
        browser: Any, asgi_live_server: str, artifacts_dir: Path) -> None:
    base = asgi_live_server
    clinician = _user("dr_erin", "clinician")
    reviewer = _user("rev_frank", "reviewer")
    question = "Does low-dose aspirin prevent a second stroke in a patient with CKD 3?"
    consultation = _answered(clinician, question)
    Feedback.objects.create(consultation=consultation, user=clinician, helpful=False,
                            problems=["wrong_citation"],
                            comment="Passage 2 says nothing about curing kidney disease.")
    item = enqueue_for_review(consultation_id=consultation.pk)
    assert item is not None
    assert set(item.reasons) == {"thumbs_down", "unsupported"}

    page = _log_in(browser, base, "rev_frank", "/review/")
    assert page.inner_text("h2").startswith("1 open item")
    row = page.locator("table.review-table tbody tr")
    assert row.count() == 1
    assert question in row.inner_text() and "Not helpful" in row.inner_text()
    row.locator(f"a[href='/review/items/{item.pk}/']").click()
    page.wait_for_url(f"{base}/review/items/{item.pk}/")
    assert page.locator("#decision-form").count() == 0  # nothing to decide before a claim
    page.click("text=Claim this item")
    page.wait_for_selector("#decision-form")
    item.refresh_from_db()
    assert item.claimed_by == reviewer and item.claim_expires_at is not None
    assert "Held by rev_frank" in page.inner_text("body")

    # What the clinician asked, what the model saw, and what the clinician said about it.
    assert page.inner_text("p.question") == question
    evidence = page.inner_text("ol.evidence")
    for pmid, title, text in PASSAGES:
        assert pmid in evidence and title in evidence and text in evidence
    assert page.locator("li.claim.unsupported").count() == 1
    assert "Metformin cures CKD 3." in page.inner_text("li.claim.unsupported")
    feedback = page.locator("section.card", has=page.locator("h2", has_text="Clinician feedback"))
    assert "Not helpful" in feedback.inner_text()
    assert "wrong_citation" in feedback.inner_text()
    assert "Passage 2 says nothing about curing kidney disease." in feedback.inner_text()

    # The correction editor appears only once "Correct" is chosen (static/js/review.js).
    assert page.is_hidden("#claim-1-text")
    page.check("input[name=kind][value=correct]")
    assert page.is_visible("#claim-1-text")
    assert page.input_value("#claim-1-text") == "Metformin cures CKD 3."
    assert page.input_value("#claim-1-citations") == "2"

    # The same page on a phone: the reviewer's own claim, the form, nothing wider than the screen.
    phone = _log_in(browser, base, "rev_frank", f"/review/items/{item.pk}/", mobile=True)
    phone.check("input[name=kind][value=correct]")
    assert phone.is_visible("#claim-1-text")
    width, viewport = _overflow(phone)
    assert width <= viewport + 1, f"the item page is {width}px wide on a {viewport}px phone"
    phone.screenshot(path=str(artifacts_dir / "review-item-phone.png"), full_page=True)
    phone.context.close()

    corrected = "Metformin at reduced doses did not increase lactic acidosis."
    page.fill("#claim-1-text", corrected)
    page.fill("#claim-1-citations", "2")
    page.fill("#id_note", "The passage is about lactic acidosis, not a cure.")
    page.screenshot(path=str(artifacts_dir / "review-item-page.png"), full_page=True)
    page.click("#decision-form button[type=submit]")
    page.wait_for_url(f"{base}/review/")
    assert "Saved: correct." in page.inner_text(".messages")
    assert page.inner_text("h2").startswith("0 open items")

    decision = ReviewDecision.objects.get()
    assert decision.item_id == item.pk and decision.reviewer == reviewer
    assert decision.kind == "correct" and decision.round == 1 and not decision.is_adjudication
    assert decision.note == "The passage is about lactic acidosis, not a cure."
    assert decision.before["answer_text"] == consultation.answer_text
    assert decision.after["claims"] == [
        {"position": 0, "text": "Aspirin lowers recurrent stroke.", "citations": [1]},
        {"position": 1, "text": corrected, "citations": [2]}]
    item.refresh_from_db()
    expected = ("Aspirin lowers recurrent stroke [1]. Metformin at reduced doses did not "
                "increase lactic acidosis [2].")
    assert item.status == ReviewItem.Status.DONE and item.outcome == "correct"
    assert item.final_answer_text == expected
    assert item.claimed_by is None and item.resolved_at is not None
    # The clinician's consultation itself is left as it was answered.
    assert Consultation.objects.get(pk=consultation.pk).answer_text == consultation.answer_text

    # The item page now shows the outcome: reviewed, who corrected it, before and after.
    page.goto(f"{base}/review/items/{item.pk}/")
    assert "Reviewed" in page.inner_text("h1 .badge")
    assert page.locator("#decision-form").count() == 0
    history = page.locator("section.card", has=page.locator("h2", has_text="Decision history"))
    assert "rev_frank · Correct" in history.inner_text()
    history.locator("summary").click()
    assert expected in history.inner_text()
    assert consultation.answer_text in history.inner_text()


# --- an admin exports the reviewed answers -------------------------------------------------

@pytest.mark.redis
def test_an_admin_exports_reviewed_answers_on_a_real_worker_and_downloads_them(
        browser: Any, asgi_live_server: str, start_worker: Any, benchmark_dir: Path,
        tmp_path: Path, settings: Any, artifacts_dir: Path) -> None:
    base = asgi_live_server
    settings.EXPORT_DIR = tmp_path / "exports"
    settings.EXPORT_EVAL_PERCENT = 0  # every item in the training split
    clinician = _user("dr_gina", "clinician")
    reviewer = _user("rev_hal", "reviewer")
    _user("admin_ivy", "admin", is_staff=True, is_superuser=True)

    def review(question: str, kind: str) -> ReviewItem:
        item = enqueue_for_review(consultation_id=_answered(clinician, question).pk)
        assert item is not None
        review_item_claim(item_id=item.pk, reviewer=reviewer)
        review_item_decide(
            item_id=item.pk, reviewer=reviewer, kind=kind,
            claims=[ClaimEdit("Aspirin lowers recurrent stroke by 22%.", [1])]
            if kind == "correct" else None,
            error_categories=["wrong_fact"] if kind == "reject" else None)
        item.refresh_from_db()
        return item

    corrected = review("Does low-dose aspirin prevent a second stroke?", "correct")
    # Word for word a question of the PubMedQA file in the worker's LITERATURE_DATA_DIR.
    review("Is metformin safe in chronic kidney disease stage 3?", "approve")
    review("Should beta-carotene be given for heart failure?", "reject")
    assert corrected.final_answer_text == "Aspirin lowers recurrent stroke by 22% [1]."

    _clear_queue()
    worker = start_worker("export", LITERATURE_DATA_DIR=str(benchmark_dir),
                          EXPORT_DIR=str(settings.EXPORT_DIR), EXPORT_EVAL_PERCENT="0")
    page = _log_in(browser, base, "admin_ivy", "/review/dashboard/")
    page.select_option("#id_format", "sft")
    page.fill("#id_min_reviews", "1")
    page.click("text=Start export")
    page.wait_for_url(f"{base}/review/dashboard/")
    batch = ExportBatch.objects.get()
    assert f"Export {batch.pk} queued." in page.inner_text(".messages")
    assert batch.out_dir == str(settings.EXPORT_DIR / f"batch-{batch.pk}")

    # review.js polls the status and reloads the page when the worker is done.
    deadline = time.monotonic() + 150
    while True:
        batch.refresh_from_db()
        if batch.status == ExportBatch.Status.FAILED:
            pytest.fail(f"export failed: {batch.error_message}\n"
                        f"{worker.log_path.read_text()[-3000:]}")
        if page.locator("a", has_text="manifest").count():
            break
        assert time.monotonic() < deadline, \
            f"no download link after 150 s ({batch.status})\n{worker.log_path.read_text()[-3000:]}"
        time.sleep(0.5)
    row = page.locator("tr.export-row")
    assert "Done" in row.inner_text()
    assert row.locator("td").nth(4).inner_text() == "1"  # records exported
    assert int(row.locator("progress").get_attribute("value")) == 100
    page.screenshot(path=str(artifacts_dir / "review-dashboard.png"), full_page=True)
    assert _succeeded(worker.log_path, "review.tasks.run_export_batch") == 1

    batch.refresh_from_db()
    assert batch.status == ExportBatch.Status.DONE and batch.file_name == "sft.jsonl"
    assert batch.counts["exported"] == 1 and batch.counts["contaminated"] == 1
    assert batch.counts["not_applicable"] == 1

    data_link = page.locator("a", has_text="sft.jsonl")
    response = page.request.get(base + data_link.get_attribute("href"))
    assert response.status == 200
    assert "attachment" in response.headers["content-disposition"]
    data = response.body()
    manifest_response = page.request.get(
        base + page.locator("a", has_text="manifest").get_attribute("href"))
    assert manifest_response.status == 200
    manifest = json.loads(manifest_response.body())

    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() == batch.sha256
    assert manifest["format"] == "sft" and manifest["records"] == 1
    assert manifest["counts"]["contaminated"] == 1
    assert manifest["lines"][0]["sha256"] == hashlib.sha256(data.splitlines(True)[0]).hexdigest()
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert len(records) == 1
    messages = records[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert "Does low-dose aspirin prevent a second stroke?" in messages[1]["content"]
    assert messages[2]["content"] == corrected.final_answer_text
    assert (Path(batch.out_dir) / "sft.jsonl").read_bytes() == data


# --- an admin runs an evaluation suite -----------------------------------------------------

@pytest.mark.redis
def test_an_admin_starts_an_evaluation_run_and_watches_it_finish_on_a_real_worker(
        browser: Any, model_server: dict[str, str], tiny_index: Path,
        asgi_live_server: str, start_worker: Any, benchmark_dir: Path, settings: Any,
        artifacts_dir: Path) -> None:
    base = asgi_live_server
    # The tiny random model talks until max_tokens; short answers keep the run fast. The
    # start form stores these in the run's options; the worker gets them too.
    settings.EVAL_MAX_TOKENS = 24
    settings.EVAL_CHOICE_MAX_TOKENS = 8
    admin = _user("admin_jo", "admin", is_staff=True, is_superuser=True)

    _clear_queue()
    worker = start_worker("eval", LITERATURE_DATA_DIR=str(benchmark_dir), EVAL_MAX_TOKENS="24",
                          EVAL_CHOICE_MAX_TOKENS="8")
    page = _log_in(browser, base, "admin_jo", "/evaluation/")
    page.select_option("#suite", "mirage")
    page.fill("#limit", "2")
    page.click("form[action='/evaluation/runs/start'] button[type=submit]")
    page.wait_for_url(f"{base}/evaluation/runs/*/")
    run = EvalRun.objects.get()
    assert page.url == f"{base}/evaluation/runs/{run.pk}/"
    assert f"Run {run.pk} is queued" in page.inner_text(".messages")

    # eval.js polls the progress and reloads the page when the run finishes.
    deadline = time.monotonic() + 150
    while page.locator("#run-status").inner_text() not in {"Complete", "Failed", "Cancelled"}:
        assert time.monotonic() < deadline, \
            f"the run did not finish in 150 s\n{worker.log_path.read_text()[-3000:]}"
        time.sleep(0.5)
    page.wait_for_selector("h2:text-is('no_retrieval')", timeout=30_000)  # the reloaded page
    run.refresh_from_db()
    assert run.status == EvalRun.Status.COMPLETE, \
        f"{run.error_message}\n{worker.log_path.read_text()[-3000:]}"
    assert _succeeded(worker.log_path, "evaluation.tasks.run_evaluation") == 1

    assert run.suite == "mirage" and run.limit == 2 and run.created_by == admin
    assert run.model_name == model_server["model"] and run.index_version
    assert run.data_path == str((benchmark_dir / "exam" / "mirage_medmcqa_mmlu.json").resolve())
    assert run.options["choice_max_tokens"] == 8
    assert run.total == run.done == 4  # two questions, with and without retrieval
    results = list(run.results.order_by("item_id", "condition"))
    assert [(r.item_id, r.condition) for r in results] == [
        ("medmcqa:m1", "no_retrieval"), ("medmcqa:m1", "retrieval"),
        ("mmlu:u1", "no_retrieval"), ("mmlu:u1", "retrieval")]
    assert all(r.outcome in {"correct", "wrong", "unparseable"} for r in results)
    assert all(r.passages for r in results if r.condition == "retrieval")
    assert not any(r.passages for r in results if r.condition == "no_retrieval")

    assert page.inner_text("#run-status") == "Complete"
    assert page.inner_text("#run-done") == "4" and page.inner_text("#run-total") == "4"
    for condition in ("retrieval", "no_retrieval"):
        block = run.metrics["conditions"][condition]["accuracy_all"]
        assert block["n"] == 2
        section = page.locator("section.card", has=page.locator(f"h2:text-is('{condition}')"))
        shown = section.locator(
            "tr", has=page.locator("th", has_text="unparseable and errors as not correct")
        ).locator("td").inner_text()
        assert shown.startswith(f"{block['value']:.3f}"), shown
        assert f"{block['successes']}/2" in shown
    listed = page.locator("section.card", has=page.locator("h2:text-is('Questions')"))
    assert listed.locator("tbody tr").count() == 4
    page.screenshot(path=str(artifacts_dir / "evaluation-run.png"), full_page=True)


# --- an admin clears an item the PHI gate held ----------------------------------------------

def test_an_admin_releases_a_phi_hold_on_a_phone(
        browser: Any, asgi_live_server: str, benchmark_dir: Path, tmp_path: Path,
        settings: Any, artifacts_dir: Path) -> None:
    from review.exports import build_export
    from review.models import PhiClearance

    settings.EXPORT_EVAL_PERCENT = 0
    clinician = _user("dr_kim", "clinician")
    reviewer = _user("rev_lee", "reviewer")
    admin = _user("admin_max", "admin", is_staff=True, is_superuser=True)
    item = enqueue_for_review(consultation_id=_answered(
        clinician, "Is the tap water in 02139 safe for dialysis patients?").pk)
    assert item is not None
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    review_item_decide(item_id=item.pk, reviewer=reviewer, kind="approve")
    assert build_export(fmt="sft", out_dir=tmp_path / "first").counts["phi_held"] == 1

    page = _log_in(browser, asgi_live_server, "admin_max", "/review/phi-holds/", mobile=True)
    card = page.locator(f"#hold-{item.pk}")
    assert "a bare five-digit number" in card.inner_text()
    question = card.locator("textarea[name=question]")
    assert question.input_value() == "Is the tap water in 02139 safe for dialysis patients?"
    width, viewport = _overflow(page)
    assert width <= viewport + 1, f"the page is {width}px wide on a {viewport}px phone"
    page.screenshot(path=str(artifacts_dir / "phi-holds-phone.png"), full_page=True)
    question.fill("Is the tap water in [ZIP] safe for dialysis patients?")
    card.locator("input[name=note]").fill("ZIP code redacted by hand.")
    card.locator("button[value=release]").click()
    page.wait_for_load_state()
    assert "released; the next export includes it" in page.inner_text("body")
    assert "No item is held" in page.inner_text("body")

    clearance = PhiClearance.objects.get()
    assert (clearance.item_id, clearance.decided_by, clearance.decision) == (
        item.pk, admin, "release")
    result = build_export(fmt="sft", out_dir=tmp_path / "second")
    exported = (tmp_path / "second" / "sft.jsonl").read_text()
    assert result.counts["exported"] == 1 and "[ZIP]" in exported and "02139" not in exported
