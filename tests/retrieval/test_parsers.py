"""Readers: real PubMed element names, bad input counted per reason, never fatal."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from retrieval.parsers import (
    DeletedCitation,
    ParsedArticle,
    ReadReport,
    UnsupportedInput,
    detect_format,
    read_records,
)
from tests.retrieval.pubmed_xml import (
    ASTHMA,
    NO_ABSTRACT,
    SEPSIS_RETRACTED,
    STROKE,
    article_xml,
    delete_xml,
    document,
    write,
)


def read_all(path: Path, fmt: str | None = None) -> tuple[list[object], ReadReport]:
    report = ReadReport()
    return list(read_records(path, fmt or detect_format(path), report)), report


def test_it_keeps_labelled_sections_and_metadata(tmp_path: Path) -> None:
    records, report = read_all(write(tmp_path / "a.xml.gz", document(ASTHMA)))
    [article] = records
    assert isinstance(article, ParsedArticle)
    assert article.pmid == "1001"
    assert [label for label, _ in article.sections] == ["BACKGROUND", "METHODS", "RESULTS",
                                                        "CONCLUSIONS"]
    assert article.abstract.startswith("BACKGROUND: Patients with mild asthma")
    assert article.year == 2018
    assert article.journal == "Journal of Tests"
    assert article.mesh_terms == ["Asthma", "Budesonide"]
    assert "Randomized Controlled Trial" in article.publication_types
    assert article.language == "eng"
    assert not article.retracted
    assert report.bytes_done == report.bytes_total > 0


def test_it_marks_retracted_publications(tmp_path: Path) -> None:
    [article], _ = read_all(write(tmp_path / "r.xml", document(SEPSIS_RETRACTED)))
    assert isinstance(article, ParsedArticle) and article.retracted


def test_it_keeps_the_pmid_of_the_retraction_notice(tmp_path: Path) -> None:
    notice = ('<CommentsCorrectionsList><CommentsCorrections RefType="CommentIn">'
              '<RefSource>Comment</RefSource><PMID Version="1">555</PMID></CommentsCorrections>'
              '<CommentsCorrections RefType="RetractionIn"><RefSource>Retraction notice'
              '</RefSource><PMID Version="1">31234567</PMID></CommentsCorrections>'
              "</CommentsCorrectionsList>")
    # Listed as a journal article only: the link to the notice is what says it was retracted.
    record = article_xml("1010", "Withdrawn trial", [("", "Results were fabricated.")]
                         ).replace("</MedlineCitation>", notice + "</MedlineCitation>")
    [article], _ = read_all(write(tmp_path / "n.xml", document(record)))
    assert isinstance(article, ParsedArticle)
    assert article.retracted and article.retraction_notice_pmid == "31234567"
    [plain], _ = read_all(write(tmp_path / "p.xml", document(SEPSIS_RETRACTED)))
    assert isinstance(plain, ParsedArticle) and plain.retraction_notice_pmid == ""
    # The notice is part of what is stored, so learning of one re-ingests the article.
    assert article.content_hash("v") != ParsedArticle(**{
        **article.__dict__, "retraction_notice_pmid": ""}).content_hash("v")


def test_it_yields_delete_citations(tmp_path: Path) -> None:
    records, _ = read_all(write(tmp_path / "u.xml", document(STROKE, delete_xml("7", "8"))))
    assert [r.pmid for r in records if isinstance(r, DeletedCitation)] == ["7", "8"]


def test_it_replaces_non_utf8_bytes_and_counts_them(tmp_path: Path) -> None:
    content = document(ASTHMA, STROKE).replace(b"Severe exacerbations", b"Severe \xff\xfe exac")
    records, report = read_all(write(tmp_path / "bad-bytes.xml", content))
    assert [r.pmid for r in records] == ["1001", "1002"]  # type: ignore[attr-defined]
    assert report.issues["non-UTF-8 bytes replaced"] == 2
    assert "\ufffd" in records[0].abstract  # type: ignore[attr-defined]


def test_a_truncated_gzip_keeps_the_complete_records_before_the_cut(tmp_path: Path) -> None:
    records_xml = [ASTHMA, STROKE, SEPSIS_RETRACTED, NO_ABSTRACT] * 30
    full = gzip.compress(document(*records_xml))
    path = tmp_path / "cut.xml.gz"
    path.write_bytes(full[: len(full) * 2 // 3])
    records, report = read_all(path)
    assert report.truncated
    assert "file truncated or corrupt (read stopped early)" in report.issues
    assert 0 < len(records) < 120
    # Only whole records come out: none has a title or abstract cut short by the truncation.
    expected = {"1001": 4, "1002": 2, "1003": 1, "1005": 0}
    for record in records:
        assert isinstance(record, ParsedArticle)
        assert len(record.sections) == expected[record.pmid]
        assert record.title.endswith(("asthma", "stroke", "shock", "anticoagulation"))


def test_a_malformed_record_is_skipped_and_later_records_survive(tmp_path: Path) -> None:
    broken = STROKE.replace("</ArticleTitle>", "</ArticleTitl>")
    records, report = read_all(write(tmp_path / "m.xml", document(ASTHMA, broken,
                                                                  SEPSIS_RETRACTED)))
    pmids = [r.pmid for r in records]  # type: ignore[attr-defined]
    assert "1001" in pmids and "1003" in pmids
    assert "1002" not in pmids
    assert report.issues["malformed XML"] >= 1
    assert report.skipped >= 1


def test_jsonl_accepts_pmid_or_id_and_counts_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps({"pmid": "11", "title": "T1", "abstract": "First abstract."}).encode(),
        b"{not json",
        json.dumps({"id": "12", "title": "T2", "abstract": "Second.",
                    "publication_types": ["Retracted Publication"]}).encode(),
        json.dumps(["a list"]).encode(),
    ]))
    records, report = read_all(path)
    assert [(r.pmid, r.retracted) for r in records] == [("11", False), ("12", True)]  # type: ignore[attr-defined]
    assert report.issues == {"malformed JSON line": 1, "JSON line is not an object": 1}
    assert report.skipped == 2


def test_pubmedqa_uses_contexts_and_long_answer_never_the_question(tmp_path: Path) -> None:
    path = tmp_path / "pq.json"
    path.write_text(json.dumps({"555": {
        "QUESTION": "Does the secret question leak?", "CONTEXTS": ["Context one.", "Two."],
        "LABELS": ["BACKGROUND", "RESULTS"], "LONG_ANSWER": "It does not.", "YEAR": "2009",
        "MESHES": ["Humans"]}}))
    [article], _ = read_all(path)
    assert isinstance(article, ParsedArticle)
    assert article.sections == [("BACKGROUND", "Context one."), ("RESULTS", "Two."),
                                ("CONCLUSIONS", "It does not.")]
    assert "secret" not in article.title + article.abstract
    assert article.year == 2009


def test_format_detection_and_unknown_names() -> None:
    assert detect_format(Path("pubmed21n1298.xml.gz")) == "pubmed-xml"
    assert detect_format(Path("a.jsonl")) == "jsonl"
    assert detect_format(Path("pqal_dev.json")) == "pubmedqa"
    with pytest.raises(UnsupportedInput, match="--format"):
        detect_format(Path("notes.txt"))
