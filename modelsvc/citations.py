"""Parse an answer into sentence-level claims with the passage numbers each one cites."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# [1], [1, 2], [1-3], [1–3], [1; 4]
_CITATION = re.compile(r"\[\s*(\d{1,3}(?:\s*(?:[,;]|[-–]|and)\s*\d{1,3})*)\s*\]")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=\S)|\n+")
_LEADING_CITATIONS = re.compile(r"^(?:\s*" + _CITATION.pattern + r")+")
# Fragments shorter than this ("Summary:", "1.") are layout, not claims.
MIN_CLAIM_WORDS = 3
MAX_RANGE = 20


@dataclass(frozen=True)
class ParsedClaim:
    text: str
    citations: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ParsedAnswer:
    claims: list[ParsedClaim]
    removed_citations: int
    # The answer with citations to passages that were not given taken out.
    cleaned_text: str = ""


def _numbers(group: str) -> list[int]:
    numbers: list[int] = []
    for part in re.split(r"\s*(?:[,;]|and)\s*", group):
        if not part:
            continue
        bounds = re.split(r"\s*[-–]\s*", part)
        if len(bounds) == 2:
            low, high = int(bounds[0]), int(bounds[1])
            if low <= high and high - low <= MAX_RANGE:
                numbers.extend(range(low, high + 1))
                continue
            numbers.extend([low, high])
        else:
            numbers.append(int(bounds[0]))
    return numbers


def _clean(text: str, n_passages: int) -> tuple[str, int]:
    removed = 0

    def keep_valid(match: re.Match[str]) -> str:
        nonlocal removed
        numbers = _numbers(match.group(1))
        valid = [n for n in numbers if 1 <= n <= n_passages]
        removed += len(numbers) - len(valid)
        return "".join(f"[{n}]" for n in dict.fromkeys(valid))

    cleaned = _CITATION.sub(keep_valid, text)
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", cleaned)), removed


def parse_answer(text: str, n_passages: int) -> ParsedAnswer:
    cleaned, removed = _clean(text, n_passages)
    sentences = [s.strip() for s in _SENTENCE_BREAK.split(cleaned) if s.strip()]
    # "... shown. [2] Next sentence": citations opening a sentence belong to the one before.
    merged: list[str] = []
    for sentence in sentences:
        leading = _LEADING_CITATIONS.match(sentence)
        if leading and merged:
            merged[-1] += " " + leading.group(0).strip()
            sentence = sentence[leading.end():].strip()
        if sentence:
            merged.append(sentence)
    claims: list[ParsedClaim] = []
    for sentence in merged:
        cited = [n for match in _CITATION.finditer(sentence) for n in _numbers(match.group(1))]
        claim_text = re.sub(r"\s+([.,;:!?])", r"\1", _CITATION.sub("", sentence)).strip()
        claim_text = re.sub(r"^(?:[-*•]|\d+[.)])\s+", "", claim_text)
        if len(claim_text.split()) < MIN_CLAIM_WORDS and not cited:
            continue
        if not claim_text:
            continue
        claims.append(ParsedClaim(text=claim_text, citations=list(dict.fromkeys(cited))))
    return ParsedAnswer(claims=claims, removed_citations=removed, cleaned_text=cleaned)
