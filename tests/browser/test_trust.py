"""What a clinician can trust, in a real browser: a withheld answer shows no draft (the reviewer
sees it), a contradicted claim is named with the passage that contradicts it, and a retracted
article is marked and never counts as support.

The answer text is arranged at the model server double and verdicts come from the verification
engine double (tests/clinic/verifier_double.py); retrieval, the pipeline, the stream and the
pages are the real ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from clinic.models import Consultation
from review.models import ReviewItem
from tests.clinic.verifier_double import verifier_double  # noqa: F401  (a fixture)
from tests.conftest import SYNTHETIC_ARTICLES
from tests.modelsvc.doubles import ModelServerDouble, Reply, completion

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("verifier_double")]
PASSWORD = "correct-horse-battery"
NOTICE_PMID = "90000099"
FINISHED = {"Answered", "Answer withheld", "Failed"}


@pytest.fixture
def synthetic_corpus(tmp_path: Path) -> Path:
    """The shared synthetic articles, the retracted one linked to its retraction notice."""
    articles = [dict(article, retraction_notice_pmid=NOTICE_PMID)
                if article["pmid"] == "90000005" else article for article in SYNTHETIC_ARTICLES]
    path = tmp_path / "synthetic.jsonl"
    path.write_text("\n".join(json.dumps(article) for article in articles) + "\n")
    return path


@pytest.fixture
def arranged_answer(settings: Any) -> Iterator[Any]:
    started: list[ModelServerDouble] = []

    def serve(text: str) -> None:
        pieces = [word + " " for word in text.split()]
        double = ModelServerDouble([Reply(stream=pieces, chunk_delay=0.02),
                                    Reply(body=completion(text))])
        double.__enter__()
        started.append(double)
        settings.MODEL_BASE_URL, settings.MODEL_NAME = double.base_url, "recorded-model"
        settings.MODEL_MAX_RETRIES = 0

    yield serve
    for double in started:
        double.__exit__()


def _user(username: str, role: str) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def _log_in(browser: Any, base: str, username: str) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return page


def _ask(page: Any, base: str, question: str, *, include_retracted: bool = False) -> None:
    page.fill("#id_question", question)
    if include_retracted:
        page.check("#id_include_retracted")
    page.click("#ask-quick")
    page.wait_for_url(f"{base}/consultations/*/")
    deadline = time.monotonic() + 60
    while page.inner_text("#status-badge") not in FINISHED:
        assert time.monotonic() < deadline, "the answer did not finish in 60 s"
        time.sleep(0.1)


def test_a_contradicted_answer_is_withheld_from_the_clinician_and_shown_to_the_reviewer(
        browser: Any, tiny_index: Path, asgi_live_server: str, arranged_answer: Any,
        artifacts_dir: Path) -> None:
    base = asgi_live_server
    _user("dr_erin", "clinician")
    _user("rev_frank", "reviewer")
    arranged_answer("Low-dose aspirin lowers recurrent ischemic stroke [1]. "
                    "Low-dose aspirin increases recurrent ischemic stroke [1].")
    page = _log_in(browser, base, "dr_erin")
    _ask(page, base, "Does low-dose aspirin prevent recurrent ischemic stroke?")
    page.screenshot(path=str(artifacts_dir / "withheld-answer.png"), full_page=True)

    consultation = Consultation.objects.get()
    assert consultation.withheld_reason == "contradicted"
    assert page.is_visible("#withheld")
    message = page.inner_text("#withheld")
    assert "[1] (PMID 90000001) says the opposite" in message and "deep consult" in message
    assert page.is_visible("#rephrase") and page.is_visible("#suggest-deep")
    # The contradicting passage is marked in the evidence list; no word of the draft is shown.
    marked = page.locator("#evidence li.contradicts")
    assert marked.count() == 1 and "Contradicts the withheld draft" in marked.inner_text()
    assert "increases" not in page.content()
    assert page.inner_text("#answer").strip() == ""
    page.reload()
    assert "increases" not in page.content() and page.is_visible("#withheld")

    item = ReviewItem.objects.get(consultation=consultation)
    review = _log_in(browser, base, "rev_frank")
    review.goto(f"{base}/review/items/{item.pk}/")
    assert "Withheld from the clinician" in review.inner_text("#withheld-reason")
    claims = review.inner_text("#draft-claims")
    assert "Low-dose aspirin increases recurrent ischemic stroke" in claims
    assert "contradicted by [1]" in claims
    review.screenshot(path=str(artifacts_dir / "withheld-answer-review.png"), full_page=True)


def test_a_retracted_article_is_marked_and_never_appears_as_support(
        browser: Any, tiny_index: Path, asgi_live_server: str, arranged_answer: Any,
        artifacts_dir: Path) -> None:
    base = asgi_live_server
    _user("dr_gail", "clinician")
    question = "Does beta-carotene reverse heart failure?"
    page = _log_in(browser, base, "dr_gail")
    # By default the retracted article is not even retrieved.
    arranged_answer("Beta-carotene reverses heart failure in all patients [1].")
    _ask(page, base, question)
    assert "90000005" not in page.inner_text("#evidence")

    page.goto(f"{base}/")
    consultation_rank = None
    arranged_answer("Beta-carotene reverses heart failure in all patients [1][2][3][4][5][6]. "
                    "Beta-carotene reverses heart failure in all patients [1][2][3][4][5][6].")
    _ask(page, base, question, include_retracted=True)
    page.screenshot(path=str(artifacts_dir / "retracted-evidence.png"), full_page=True)
    consultation = Consultation.objects.latest("id")
    assert consultation.include_retracted
    retracted = consultation.passages.get(pmid="90000005")
    consultation_rank = retracted.rank
    item = page.locator(f"#passage-{consultation_rank}")
    assert "Retracted" in item.inner_text() and f"PMID {NOTICE_PMID}" in item.inner_text()
    assert item.locator(f"a[href='https://pubmed.ncbi.nlm.nih.gov/{NOTICE_PMID}/']").count() == 1
    # No claim is supported by the retracted passage, whether the answer is shown or withheld.
    for claim in consultation.claims.all():
        assert not (claim.supported and claim.passage == consultation_rank)
    if not consultation.abstained:
        flags = page.inner_text("#answer")
        assert "cites a retracted article" in flags
