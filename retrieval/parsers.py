"""Readers for PubMed/MEDLINE XML, JSON Lines and PubMedQA files.

Each reader yields `ParsedArticle` and `DeletedCitation` records and counts what it had to
skip in a `ReadReport`, so one bad record never costs the rest of the file. Readers only
parse: what happens to the records (hashes, chunks, embeddings) is the ingest service's job.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

logger = logging.getLogger(__name__)

FORMATS = ("pubmed-xml", "jsonl", "pubmedqa")
PMID_MAX_LENGTH = 20
RETRACTED_TYPE = "Retracted Publication"
REPLACEMENT_CHARACTER = "\ufffd"


class UnsupportedInput(Exception):
    """The file cannot be read at all (unknown format, missing file); says what to do."""


@dataclass
class ParsedArticle:
    pmid: str
    title: str
    sections: list[tuple[str, str]]  # (label, text); label "" when the abstract has none
    journal: str = ""
    year: int | None = None
    mesh_terms: list[str] = field(default_factory=list)
    publication_types: list[str] = field(default_factory=list)
    language: str = ""
    retracted: bool = False
    # The retraction notice's PMID (CommentsCorrections RefType="RetractionIn"), when linked.
    retraction_notice_pmid: str = ""

    @property
    def abstract(self) -> str:
        return "\n".join(f"{label}: {text}" if label else text for label, text in self.sections)

    def content_hash(self, chunker_version: str) -> str:
        fields: list[Any] = [chunker_version, self.pmid, self.title, self.sections, self.journal,
                             self.year, self.mesh_terms, self.publication_types, self.language,
                             self.retracted]
        # Appended only when present, so articles without a notice keep the hashes they had and
        # a re-ingest leaves them alone.
        if self.retraction_notice_pmid:
            fields.append(self.retraction_notice_pmid)
        payload = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class DeletedCitation:
    pmid: str


Record = ParsedArticle | DeletedCitation


@dataclass
class ReadReport:
    """What a reader saw: progress in bytes, and issue counts by reason."""

    bytes_total: int = 0
    bytes_done: int = 0
    issues: Counter[str] = field(default_factory=Counter)
    # Records dropped by the reader itself (unparseable, no abstract, ...). Issues such as
    # "non-UTF-8 bytes replaced" are warnings and do not count here.
    skipped: int = 0
    truncated: bool = False

    def skip(self, reason: str, count: int = 1) -> None:
        self.issues[reason] += count
        self.skipped += count


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".xml", ".xml.gz")):
        return "pubmed-xml"
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "pubmedqa"
    raise UnsupportedInput(f"Cannot tell the format of {path.name} from its name; pass "
                           f"--format with one of {', '.join(FORMATS)}.")


def read_records(path: Path, fmt: str, report: ReadReport) -> Iterator[Record]:
    if fmt not in FORMATS:
        raise UnsupportedInput(f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if not path.is_file():
        raise UnsupportedInput(f"{path} does not exist or is not a file.")
    report.bytes_total = path.stat().st_size
    readers = {"pubmed-xml": _read_pubmed_xml, "jsonl": _read_jsonl, "pubmedqa": _read_pubmedqa}
    return readers[fmt](path, report)


# --- byte stream ------------------------------------------------------------------------


class _SafeStream(io.RawIOBase):
    """A file (gzip or plain) read as valid UTF-8 bytes, whatever the file holds.

    Invalid bytes become U+FFFD and are counted; a truncated gzip ends the stream early and
    sets `report.truncated`, instead of raising in the middle of the parser. PubMed files
    are UTF-8 by specification, so re-encoding as UTF-8 never changes a valid file.
    """

    def __init__(self, path: Path, report: ReadReport, sanitise_utf8: bool = True) -> None:
        super().__init__()
        self._raw = open(path, "rb")  # noqa: SIM115  (closed in close())
        # zlib directly, not GzipFile: GzipFile drops the bytes it decompressed in a read
        # that hits a truncated end, and we want every complete record before the cut.
        self._inflater = (zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
                          if path.name.lower().endswith(".gz") else None)
        self._report = report
        self._sanitise = sanitise_utf8
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = b""
        self._finished = False

    def readable(self) -> bool:
        return True

    def _truncated(self, reason: str) -> None:
        logger.warning("input ends early: %s", reason)
        self._report.truncated = True
        self._report.issues["file truncated or corrupt (read stopped early)"] += 1

    def _read_bytes(self, size: int) -> bytes:
        compressed = self._raw.read(size)
        if self._inflater is None:
            return compressed
        try:
            if not compressed:
                if not self._inflater.eof:
                    self._truncated("the gzip stream ends before its end marker")
                return b""
            data = self._inflater.decompress(compressed)
            while self._inflater.eof and self._inflater.unused_data:  # multi-member gzip
                rest = self._inflater.unused_data
                self._inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
                data += self._inflater.decompress(rest)
            return data if data else self._read_bytes(size)
        except zlib.error as error:
            self._truncated(f"corrupt gzip data ({error})")
            return b""

    def _pull(self, size: int) -> bytes:
        data = self._read_bytes(size)
        self._report.bytes_done = self._raw.tell()
        if not data:
            self._finished = True
            if self._sanitise:
                return self._decoder.decode(b"", final=True).encode("utf-8")
            return b""
        if not self._sanitise:
            return data
        text = self._decoder.decode(data)
        replaced = text.count(REPLACEMENT_CHARACTER) - data.count(b"\xef\xbf\xbd")
        if replaced > 0:
            self._report.issues["non-UTF-8 bytes replaced"] += replaced
        return text.encode("utf-8")

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        while len(self._pending) < size and not self._finished:
            self._pending += self._pull(max(size, 65536))
        chunk, self._pending = self._pending[:size], self._pending[size:]
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._raw.close()
        super().close()


# --- PubMed XML ---------------------------------------------------------------------------


def _text(element: etree._Element | None) -> str:
    if element is None:
        return ""
    return " ".join("".join(element.itertext()).split())


def _year(article: etree._Element) -> int | None:
    candidates = [
        article.findtext("Article/Journal/JournalIssue/PubDate/Year"),
        article.findtext("Article/Journal/JournalIssue/PubDate/MedlineDate"),
        article.findtext("Article/ArticleDate/Year"),
        article.findtext("DateCompleted/Year"),
    ]
    for value in candidates:
        match = re.search(r"\b(1[89]\d\d|20\d\d)\b", value or "")
        if match:
            return int(match.group(1))
    return None


def _parse_pubmed_article(element: etree._Element, report: ReadReport) -> ParsedArticle | None:
    citation = element.find("MedlineCitation")
    if citation is None:
        report.skip("no MedlineCitation element")
        return None
    pmid = (citation.findtext("PMID") or "").strip()
    if not pmid.isdigit() or len(pmid) > PMID_MAX_LENGTH:
        report.skip("missing or invalid PMID")
        return None
    article = citation.find("Article")
    if article is None:
        report.skip("no Article element")
        return None
    sections: list[tuple[str, str]] = []
    for part in article.findall("Abstract/AbstractText"):
        text = _text(part)
        if text:
            sections.append(((part.get("Label") or "").strip().upper(), text))
    publication_types = [_text(p) for p in article.findall("PublicationTypeList/PublicationType")]
    retraction_notices = citation.findall("CommentsCorrectionsList/CommentsCorrections"
                                          "[@RefType='RetractionIn']")
    notice_pmids = [pmid for pmid in (_text(notice.find("PMID")) for notice in retraction_notices)
                    if pmid.isdigit() and len(pmid) <= PMID_MAX_LENGTH]
    journal = _text(article.find("Journal/Title")) or _text(article.find("Journal/ISOAbbreviation"))
    return ParsedArticle(
        pmid=pmid,
        title=_text(article.find("ArticleTitle")),
        sections=sections,
        journal=journal[:400],
        year=_year(citation),
        mesh_terms=[_text(d) for d in
                    citation.findall("MeshHeadingList/MeshHeading/DescriptorName")],
        publication_types=[p for p in publication_types if p],
        language=_text(article.find("Language"))[:16],
        retracted=RETRACTED_TYPE in publication_types or bool(retraction_notices),
        retraction_notice_pmid=notice_pmids[0] if notice_pmids else "",
    )


def _read_pubmed_xml(path: Path, report: ReadReport) -> Iterator[Record]:
    stream = _SafeStream(path, report)
    # recover=True: libxml2 resynchronises after a malformed record instead of abandoning
    # the file; records that overlap a parse error are then dropped (see below).
    context = etree.iterparse(stream, events=("end",),
                              tag=("PubmedArticle", "PubmedBookArticle", "DeleteCitation"),
                              recover=True, huge_tree=True, resolve_entities=False)
    held: tuple[int, etree._Element] | None = None  # a record waits until the next one ends
    records = 0

    def error_lines() -> list[int]:
        return [entry.line for entry in context.error_log]

    def release(record: tuple[int, etree._Element], end_line: int | None) -> Iterator[Record]:
        start_line, element = record
        broken = any(line >= start_line and (end_line is None or line < end_line)
                     for line in error_lines())
        try:
            if broken:
                report.skip("malformed XML")
            elif end_line is None and report.truncated:
                report.skip("cut off by the end of a truncated file")
            elif element.tag == "DeleteCitation":
                for pmid_element in element.findall("PMID"):
                    pmid = (pmid_element.text or "").strip()
                    if pmid.isdigit():
                        yield DeletedCitation(pmid)
            elif element.tag == "PubmedBookArticle":
                report.skip("book record (not a journal article)")
            else:
                parsed = _parse_pubmed_article(element, report)
                if parsed is not None:
                    yield parsed
        finally:
            element.clear()
            while element.getprevious() is not None:
                del element.getparent()[0]

    try:
        try:
            for _event, element in context:
                records += 1
                line = element.sourceline or 0
                if held is not None:
                    yield from release(held, line)
                held = (line, element)
        except etree.XMLSyntaxError as error:
            # Even recover mode gives up on some input (e.g. no root element at all).
            logger.warning("XML parser stopped in %s: %s", path.name, error)
            report.issues[f"XML parsing stopped: {error.msg}"[:200]] += 1
        if held is not None:
            yield from release(held, None)
        if not records and not report.truncated:
            errors = list(context.error_log)
            detail = f" (parser: {errors[0].message})" if errors else ""
            report.issues[f"no PubMed records found{detail}"[:200]] += 1
    finally:
        stream.close()


# --- JSON Lines ---------------------------------------------------------------------------


def _sections_from_json(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        text = " ".join(value.split())
        return [("", text)] if text else []
    if isinstance(value, list):
        sections = []
        for item in value:
            if isinstance(item, dict):
                label, text = str(item.get("label") or ""), str(item.get("text") or "")
            elif isinstance(item, list | tuple) and len(item) == 2:
                label, text = str(item[0] or ""), str(item[1] or "")
            else:
                label, text = "", str(item)
            text = " ".join(text.split())
            if text:
                sections.append((label.strip().upper(), text))
        return sections
    return []


def _year_from_json(value: Any) -> int | None:
    match = re.search(r"\b(1[89]\d\d|20\d\d)\b", str(value or ""))
    return int(match.group(1)) if match else None


def _string_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [str(item) for item in value if item]
    return []


def article_from_mapping(pmid: str, data: dict[str, Any],
                         report: ReadReport) -> ParsedArticle | None:
    pmid = str(pmid).strip()
    if not pmid or len(pmid) > PMID_MAX_LENGTH:
        report.skip("missing or invalid id")
        return None
    publication_types = _string_list(data.get("publication_types"))
    notice_pmid = str(data.get("retraction_notice_pmid") or "").strip()
    if not notice_pmid.isdigit() or len(notice_pmid) > PMID_MAX_LENGTH:
        notice_pmid = ""
    return ParsedArticle(
        pmid=pmid,
        title=" ".join(str(data.get("title") or "").split()),
        sections=_sections_from_json(data.get("sections") or data.get("abstract")),
        journal=str(data.get("journal") or "")[:400],
        year=_year_from_json(data.get("year")),
        mesh_terms=_string_list(data.get("mesh_terms")),
        publication_types=publication_types,
        language=str(data.get("language") or "")[:16],
        retracted=(bool(data.get("retracted")) or RETRACTED_TYPE in publication_types
                   or bool(notice_pmid)),
        retraction_notice_pmid=notice_pmid,
    )


def _read_jsonl(path: Path, report: ReadReport) -> Iterator[Record]:
    stream = io.BufferedReader(_SafeStream(path, report))
    try:
        for raw_line in stream:
            line = raw_line.decode("utf-8").strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                report.skip("malformed JSON line")
                continue
            if not isinstance(data, dict):
                report.skip("JSON line is not an object")
                continue
            if data.get("deleted") is True and (data.get("pmid") or data.get("id")):
                yield DeletedCitation(str(data.get("pmid") or data.get("id")))
                continue
            parsed = article_from_mapping(str(data.get("pmid") or data.get("id") or ""), data,
                                          report)
            if parsed is not None:
                yield parsed
    finally:
        stream.close()


# --- PubMedQA -----------------------------------------------------------------------------


def _read_pubmedqa(path: Path, report: ReadReport) -> Iterator[Record]:
    stream = io.BufferedReader(_SafeStream(path, report))
    try:
        raw = stream.read().decode("utf-8")
    finally:
        stream.close()
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as error:
        report.issues[f"not valid JSON ({error.msg} at line {error.lineno})"] += 1
        return
    if not isinstance(items, dict):
        report.issues["not a PubMedQA file (expected an object keyed by PMID)"] += 1
        return
    for pmid, item in items.items():
        if not isinstance(item, dict) or not isinstance(item.get("CONTEXTS"), list):
            report.skip("PubMedQA item without CONTEXTS")
            continue
        labels = item.get("LABELS") or []
        sections = [(str(labels[i]) if i < len(labels) else "", str(context))
                    for i, context in enumerate(item["CONTEXTS"])]
        if item.get("LONG_ANSWER"):
            sections.append(("CONCLUSIONS", str(item["LONG_ANSWER"])))
        # The QUESTION is the title rephrased: using it would leak the evaluation queries
        # into the documents, so these articles have no title.
        yield from [a for a in [article_from_mapping(pmid, {
            "title": "", "sections": sections, "year": item.get("YEAR"),
            "mesh_terms": item.get("MESHES") or [],
        }, report)] if a is not None]
