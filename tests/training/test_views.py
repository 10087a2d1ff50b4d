"""The training page builds a set with the literature options an admin picks; others get 404."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from retrieval.models import Article
from training.models import TrainingSet

pytestmark = [pytest.mark.shared_data, pytest.mark.django_db]


def question_article(pmid: str, title: str, conclusion: str) -> None:
    Article.objects.create(
        pmid=pmid, title=title, content_hash=pmid,
        abstract_sections=[["BACKGROUND", f"Background of {title}"],
                           ["RESULTS", "Outcomes were measured in 120 adults over a year."],
                           ["CONCLUSIONS", conclusion]])


def test_an_admin_builds_a_balanced_set_with_whole_abstracts(client: Client,
                                                             admin_user: User) -> None:
    for n, (drug, outcome) in enumerate([("aspirin", "stroke"), ("statins", "dementia"),
                                         ("metformin", "cancer"), ("zinc", "colds")]):
        question_article(f"9500000{n}", f"Does {drug} prevent {outcome}?",
                         f"{drug.title()} reduced {outcome}.")
    question_article("95000010", "Does vitamin D prevent fractures?",
                     "Vitamin D did not reduce fractures.")
    client.force_login(admin_user)

    response = client.post("/training/sets/create", {
        "literature": "1", "gold_passage": "abstract", "balance_labels": "1", "name": "page"})

    assert response.status_code == 302
    training_set = TrainingSet.objects.get(name="page")
    literature = training_set.card["sources"]["literature"]
    assert literature["options"] == {"balance_labels": True, "expert_labels": False,
                                     "gold_passage": "abstract"}
    # Four "yes", one "no": "yes" is capped at one.
    assert training_set.card["counts"]["sft"]["by_label"] == {"no": 1, "yes": 1}
    assert training_set.sft_records == 2
    page = client.get("/training/")
    assert "Balance the yes/no/maybe labels" in page.content.decode()


def test_an_unknown_passage_choice_is_refused_and_nothing_is_built(client: Client,
                                                                   admin_user: User) -> None:
    question_article("95000020", "Does aspirin prevent stroke?", "Aspirin reduced stroke.")
    client.force_login(admin_user)

    response = client.post("/training/sets/create", {"literature": "1",
                                                     "gold_passage": "conclusion"},
                           follow=True)

    assert "gold_passage must be one of context, abstract" in response.content.decode()
    assert not TrainingSet.objects.exists()


def test_a_clinician_cannot_build_a_set(client: Client, clinician: User) -> None:
    client.force_login(clinician)
    assert client.post("/training/sets/create", {"literature": "1"}).status_code == 404
    assert not TrainingSet.objects.exists()
