"""The dashboard is for admins only; comparison and drill-down show per-question changes."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from evaluation.models import EvalRun, PromotionDecision
from modelsvc.models import ServedModel
from tests.evaluation.factories import make_run

pytestmark = pytest.mark.urls("tests.evaluation.urls")


@pytest.fixture
def two_runs(db: None) -> tuple[EvalRun, EvalRun]:
    before = make_run(correct=2, total=4, outcomes=["correct", "correct", "wrong", "unparseable"])
    after = make_run(correct=2, total=4, outcomes=["correct", "wrong", "correct", "correct"])
    return before, after


@pytest.mark.parametrize("persona", ["clinician", "reviewer"])
def test_it_hides_every_page_from_non_admins(client: Client, persona: str, request: Any,
                                             two_runs: tuple[EvalRun, EvalRun]) -> None:
    client.force_login(request.getfixturevalue(persona))
    run = two_runs[0]
    result = run.results.first()
    for url in ("/evaluation/", f"/evaluation/runs/{run.pk}/",
                f"/evaluation/runs/{run.pk}/progress", f"/evaluation/results/{result.pk}/",
                f"/evaluation/compare/?a={run.pk}&b={two_runs[1].pk}", "/evaluation/models/"):
        assert client.get(url).status_code == 404, url
    assert client.post("/evaluation/runs/start", {"suite": "router"}).status_code == 404
    assert not EvalRun.objects.exclude(pk__in=[r.pk for r in two_runs]).exists()


def test_the_dashboard_draws_runs_over_time_with_reference_lines(
        client: Client, admin_user: User, two_runs: tuple[EvalRun, EvalRun]) -> None:
    client.force_login(admin_user)
    response = client.get("/evaluation/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "<svg" in page and "GPT-4 + MedRAG 70.6%" in page
    assert "<script>" not in page  # CSP: our own static files only
    assert f"/evaluation/runs/{two_runs[0].pk}/" in page


def test_the_comparison_lists_questions_that_got_better_and_worse(
        client: Client, admin_user: User, two_runs: tuple[EvalRun, EvalRun]) -> None:
    before, after = two_runs
    client.force_login(admin_user)
    response = client.get(f"/evaluation/compare/?a={before.pk}&b={after.pk}")
    assert response.status_code == 200
    groups = response.context["groups"]
    assert [e["item_id"] for e in groups["better"]] == ["q2", "q3"]
    assert [e["item_id"] for e in groups["worse"]] == ["q1"]
    assert [e["item_id"] for e in groups["same"]] == ["q0"]
    assert response.context["comparable"] is True


def test_a_question_drills_down_to_its_passages_and_answer(
        client: Client, admin_user: User, two_runs: tuple[EvalRun, EvalRun]) -> None:
    result = two_runs[0].results.first()
    result.passages = [{"rank": 1, "pmid": "90000001", "title": "Aspirin <b>trial</b>",
                        "text": "Aspirin reduced stroke.", "score": 0.9}]
    result.gold_pmids = ["90000001"]
    result.answer_text = "Aspirin prevents stroke [1].\nAnswer: yes"
    result.save()
    client.force_login(admin_user)
    page = client.get(f"/evaluation/results/{result.pk}/").content.decode()
    assert "Aspirin reduced stroke." in page and "(gold)" in page
    assert "Aspirin &lt;b&gt;trial&lt;/b&gt;" in page
    assert "Answer: yes" in page


def test_an_admin_starts_a_run_as_a_background_job(
        client: Client, admin_user: User, django_capture_on_commit_callbacks: Any,
        monkeypatch: pytest.MonkeyPatch, shared_data_dir: Any) -> None:
    from evaluation import tasks

    queued: list[int] = []
    monkeypatch.setattr(tasks.run_evaluation, "apply_async",
                        lambda args, retry: queued.extend(args))
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/evaluation/runs/start", {"suite": "router", "limit": "6"})
    run = EvalRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/evaluation/runs/{run.pk}/"
    assert queued == [run.pk]
    assert (run.status, run.total, run.created_by) == ("pending", 6, admin_user)
    progress = client.get(f"/evaluation/runs/{run.pk}/progress").json()
    assert progress == {**progress, "done": 0, "total": 6, "finished": False}


def test_the_gate_page_refuses_and_records_an_override(
        client: Client, admin_user: User, settings: Any) -> None:
    settings.EVAL_GATE_SUITES = ["pubmedqa"]
    candidate = ServedModel.objects.create(name="lora-2", base_model="b", served_name="lora-2",
                                           capability="literature")
    client.force_login(admin_user)
    client.post("/evaluation/models/", {"model": candidate.pk})
    candidate.refresh_from_db()
    assert candidate.status == "candidate"
    client.post("/evaluation/models/", {"model": candidate.pk, "override": "1",
                                        "override_reason": "Urgent fix"})
    candidate.refresh_from_db()
    assert candidate.status == "serving"
    assert list(PromotionDecision.objects.order_by("id").values_list("promoted", "overridden")) \
        == [(False, False), (True, True)]


def test_the_gate_page_shows_its_minimum_and_margin_and_why_a_small_run_is_refused(
        client: Client, admin_user: User, settings: Any) -> None:
    settings.EVAL_GATE_SUITES = ["pubmedqa"]
    settings.EVAL_GATE_MIN_ITEMS = 150
    settings.EVAL_GATE_MARGIN = 0.03
    ServedModel.objects.create(name="base", base_model="b", served_name="base",
                               capability="literature", status="serving")
    candidate = ServedModel.objects.create(name="lora-3", base_model="b",
                                           served_name="lora-3", capability="literature")
    run = make_run(served_model=candidate, correct=5, total=5)
    EvalRun.objects.filter(pk=run.pk).update(limit=5)
    client.force_login(admin_user)

    page = client.get("/evaluation/models/").content.decode()

    assert "at least <strong>150 questions</strong>" in page
    assert "&minus;3 points</strong>" in page and "EVAL_GATE_MARGIN = 0.03" in page
    assert (f"The pubmedqa run {run.pk} scored 5 items; the gate needs at least 150 per suite. "
            "Run the suite without --limit (or with --limit 150 or more).") in page
    assert '<span class="badge failed">refuses</span>' in page
