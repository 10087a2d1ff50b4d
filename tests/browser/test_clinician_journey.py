"""A clinician's journey in a real browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from clinic.models import Claim, Consultation, Feedback, RetrievedPassage

pytestmark = [pytest.mark.browser, pytest.mark.model_server]
PASSWORD = "correct-horse-battery"


def _user(username: str) -> User:
    from django.contrib.auth.models import Group

    user = User.objects.create_user(username=username, password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name="clinician")[0])
    return user


def _log_in(browser: Any, base: str, username: str, *, mobile: bool = False) -> Any:
    context = browser.new_context(viewport={"width": 390, "height": 844} if mobile
                                  else {"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return page


def test_a_clinician_asks_watches_tokens_stream_opens_evidence_and_gives_feedback(
        browser: Any, model_server: dict[str, str], tiny_index: Path, asgi_live_server: str,
        artifacts_dir: Path) -> None:
    base = asgi_live_server
    _user("dr_alice")
    _user("dr_bob")
    page = _log_in(browser, base, "dr_alice", mobile=True)
    page.fill("#id_question", "Does low-dose aspirin prevent recurrent ischemic stroke?")
    page.screenshot(path=str(artifacts_dir / "ask-page.png"), full_page=True)
    page.click("#ask-quick")
    page.wait_for_url(f"{base}/consultations/*/")

    # While the model writes, the page shows writing / checking progress, never raw tokens.
    seen_progress = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stage = page.inner_text("#stage")
        status = page.inner_text("#status-badge")
        if stage.strip() and status not in {"Answered", "Answer withheld"}:
            seen_progress = True
        if status in {"Answered", "Answer withheld", "Failed"}:
            break
        time.sleep(0.05)
    assert seen_progress, "no progress was shown before the answer completed"
    assert page.inner_text("#status-badge") in {"Answered", "Answer withheld"}, \
        page.inner_text("#error")
    assert "first token after" in page.inner_text("#ttft")

    consultation = Consultation.objects.get()
    assert consultation.status == "complete"
    assert consultation.answer_text.strip()
    assert consultation.passages.count() >= 1
    assert consultation.prompt_tokens > 0 and consultation.completion_tokens > 0
    if consultation.abstained:
        # The tiny random model's draft is withheld: the page says why, and shows none of it.
        assert page.is_visible("#withheld")
        assert consultation.answer_text.strip()[:30] not in page.content()

    # The evidence list links to PubMed and shows each passage on demand.
    first = page.locator("#evidence li").first
    assert "pubmed.ncbi.nlm.nih.gov" in first.locator("a").get_attribute("href")
    first.locator("button.show-passage").click()
    assert page.is_visible("#passage-view")
    passage = consultation.passages.order_by("rank").first()
    assert passage.text[:40] in page.inner_text("#passage-view-text")

    page.check("input[name=helpful][value=no]")
    page.check("input[name=problems][value=wrong_citation]")
    page.fill("#id_comment", "The citation does not say this.")
    page.click("#send-feedback")
    page.wait_for_selector(".messages")
    feedback = Feedback.objects.get()
    assert feedback.helpful is False and feedback.problems == ["wrong_citation"]

    # Another clinician gets a 404 for the same page.
    other = _log_in(browser, base, "dr_bob")
    response = other.goto(f"{base}/consultations/{consultation.pk}/")
    assert response.status == 404


def test_a_cited_claim_opens_its_passage_and_unsupported_claims_are_marked(
        browser: Any, asgi_live_server: str) -> None:
    user = _user("dr_carol")
    consultation = Consultation.objects.create(
        user=user, question="Is metformin safe in CKD 3?", status="complete",
        answer_text="Metformin is safe at adjusted doses [1]. It cures CKD [1].", support_rate=0.5)
    RetrievedPassage.objects.create(consultation=consultation, rank=1, pmid="90000002",
                                    title="Metformin use in CKD stage 3", score=0.9,
                                    text="Metformin at adjusted doses appears safe in CKD stage 3.",
                                    publication_types=["Journal Article"], year=2020)
    Claim.objects.create(consultation=consultation, position=0, citations=[1], supported=True,
                         support_score=0.8, text="Metformin is safe at adjusted doses [1].")
    Claim.objects.create(consultation=consultation, position=1, citations=[1], supported=False,
                         support_score=0.1, text="It cures CKD [1].")
    page = _log_in(browser, asgi_live_server, "dr_carol")
    page.goto(f"{asgi_live_server}/consultations/{consultation.pk}/")
    page.locator(".claim button.cite").first.click()
    assert "adjusted doses appears safe" in page.inner_text("#passage-view-text")
    unsupported = page.locator(".claim.unsupported")
    assert unsupported.count() == 1
    assert "not found in the cited passage" in unsupported.inner_text()


def test_a_deep_consult_shows_its_steps_completing(
        browser: Any, model_server: dict[str, str], tiny_index: Path, asgi_live_server: str,
        start_worker: Any, artifacts_dir: Path) -> None:
    _user("dr_dana")
    start_worker("deep")
    page = _log_in(browser, asgi_live_server, "dr_dana")
    page.fill("#id_question", "Should older adults take vitamin D to prevent fractures?")
    page.click("#ask-deep")
    page.wait_for_url(f"{asgi_live_server}/consultations/*/")
    page.wait_for_selector("#steps li", timeout=60_000)
    deadline = time.monotonic() + 180  # polled from here: the page's CSP forbids eval
    while page.inner_text("#status-badge") not in {"Answered", "Answer withheld", "Failed",
                                                    "Cancelled"}:
        assert time.monotonic() < deadline, "the deep consult did not finish in 180 s"
        time.sleep(0.3)
    page.screenshot(path=str(artifacts_dir / "deep-consult-page.png"), full_page=True)
    consultation = Consultation.objects.get()
    assert consultation.status == "complete", consultation.error_message
    assert page.locator("#steps li").count() == consultation.steps.count() >= 4
    assert page.locator("#steps li.done").count() >= 4
    assert int(page.eval_on_selector("#progress", "p => p.value")) == \
        int(page.eval_on_selector("#progress", "p => p.max"))
    assert (artifacts_dir / "deep-consult-page.png").stat().st_size > 1000
