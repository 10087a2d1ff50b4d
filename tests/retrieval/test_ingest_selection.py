"""A topic selection ingests a slice of a file (the demo corpus) and leaves the file due for a
full ingest; the full ingest then embeds nothing twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from retrieval.models import Article, IngestFile
from retrieval.services import PARTIAL_INGEST, IngestError, Selection, ingest_paths

pytestmark = pytest.mark.django_db(transaction=True)


def _record(pmid: str, title: str, **extra: Any) -> dict[str, Any]:
    return {"pmid": pmid, "title": title, "abstract": f"RESULTS: {title} was studied.",
            "journal": "BMJ", "year": 2021, "mesh_terms": ["Humans"],
            "publication_types": ["Journal Article"], **extra}


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    records = [
        _record("1", "Metformin and cardiovascular mortality in type 2 diabetes"),
        _record("2", "Photodynamic inactivation of E. coli on carbon nanotubes", mesh_terms=[]),
        _record("3", "Home blood pressure monitoring in hypertension"),
        _record("4", "Asthma in mice", mesh_terms=["Mice", "Asthma"]),
        _record("5", "Inhaled corticosteroids in asthma", language="fre"),
        _record("6", "SGLT2 inhibitors in heart failure", mesh_terms=[],
                publication_types=["Randomized Controlled Trial"]),
        _record("7", "Statins after stroke", retracted=True),
        _record("8", "Sertraline for depression in primary care"),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return path


def test_the_demo_topics_take_clinical_articles_about_people(mixed_file: Path, settings: Any,
                                                              tmp_path: Path) -> None:
    settings.INDEX_DIR = tmp_path / "index"
    ingest_paths([mixed_file], selection=Selection.parse("demo", None))
    assert sorted(Article.objects.values_list("pmid", flat=True)) == ["1", "3", "6", "8"]
    ingest_file = IngestFile.objects.get()
    assert ingest_file.status == IngestFile.Status.DONE
    assert ingest_file.issues[PARTIAL_INGEST] == 4


def test_a_limit_stops_reading_and_the_full_ingest_embeds_nothing_twice(
        mixed_file: Path, settings: Any, tmp_path: Path) -> None:
    settings.INDEX_DIR = tmp_path / "index"
    ingest_paths([mixed_file], selection=Selection.parse("demo", 2))
    assert sorted(Article.objects.values_list("pmid", flat=True)) == ["1", "3"]
    assert PARTIAL_INGEST in IngestFile.objects.get().issues

    full = ingest_paths([mixed_file]).files.get()
    assert full.unchanged == 2
    assert full.created == 6
    assert PARTIAL_INGEST not in full.issues


def test_the_ingest_command_takes_topics_and_a_limit(mixed_file: Path, settings: Any,
                                                    tmp_path: Path, capsys: Any) -> None:
    settings.INDEX_DIR = tmp_path / "index"
    call_command("ingest", str(mixed_file), "--topics", "sertraline,photodynamic",
                 "--no-progress")
    # The nanotube study is not about people, so only the sertraline trial is taken.
    assert list(Article.objects.values_list("pmid", flat=True)) == ["8"]
    call_command("ingest", str(mixed_file), "--topics", "blood pressure,metformin",
                 "--limit", "1", "--no-progress")
    assert sorted(Article.objects.values_list("pmid", flat=True)) == ["1", "8"]
    assert "outside the selection (partial ingest)" in capsys.readouterr().out


def test_a_selection_is_refused_with_the_workers() -> None:
    with pytest.raises(IngestError, match="in-process only"):
        ingest_paths([__file__], use_celery=True, selection=Selection.parse("demo", 5))
    with pytest.raises(IngestError, match="at least 1"):
        Selection.parse("demo", 0)
