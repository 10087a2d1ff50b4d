"""A clinician on a phone finds the Literature page from the top navigation, sees what is
indexed and what is still indexing, searches the real index and opens a titled article."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from retrieval.models import IngestFile, IngestRun

pytestmark = [pytest.mark.browser]
PASSWORD = "correct-horse-battery"
PHONE = {"width": 390, "height": 844}


def test_a_clinician_on_a_phone_searches_and_browses_the_literature(
        browser: Any, tiny_index: Path, asgi_live_server: str, artifacts_dir: Path) -> None:
    base = asgi_live_server
    user = User.objects.create_user(username="dr_lit", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name="clinician")[0])
    run = IngestRun.objects.create(status=IngestRun.Status.RUNNING, use_celery=True)
    IngestFile.objects.create(run=run, path="/data/pubmed/pubmed21n1298.xml.gz",
                              format="pubmed-xml", status=IngestFile.Status.RUNNING,
                              bytes_total=1000, bytes_done=250, articles_read=5000, created=4000)

    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "dr_lit")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")

    page.click("nav >> text=Literature")
    page.wait_for_url(f"{base}/literature/")
    assert page.inner_text("#article-count") == "6"
    assert "pubmed21n1298.xml.gz" in page.inner_text("#indexing")
    assert page.get_attribute("#indexing progress", "value") == "25"
    # Newest first: the 2022 statin trial heads the list.
    assert "Statins and muscle symptoms" in page.inner_text("#articles li >> nth=0")
    page.screenshot(path=str(artifacts_dir / "literature-phone.png"), full_page=True)

    page.fill("#q", "metformin kidney disease")
    page.click("form.search button[type=submit]")
    page.wait_for_selector("#results")
    first = page.locator("#results li").first
    assert "Metformin use in chronic kidney disease stage 3" in first.inner_text()
    assert "Synthetic Nephrology · 2020 · Journal Article · PMID 90000002" in first.inner_text()
    assert first.locator("a").get_attribute("href") == "https://pubmed.ncbi.nlm.nih.gov/90000002/"
    # Nothing is wider than the phone: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(artifacts_dir / "literature-search-phone.png"), full_page=True)
    context.close()
