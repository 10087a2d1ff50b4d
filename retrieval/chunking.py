"""Split an abstract into chunks that stay inside one article and fit the encoder.

A chunk holds whole sentences of consecutive sections and records which sections it covers;
the embedded text is the title followed by the chunk, so a chunk is never read out of context.
MiniLM reads at most 256 word pieces: most abstracts give one to three chunks.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

CHUNKER_VERSION = "sections-v2"
TITLE_TOKEN_CAP = 64  # a very long title still leaves room for the passage itself
SPECIAL_TOKENS = 2  # [CLS] and [SEP]
SECTION_FIELD_LENGTH = 100

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[\"'])")
# "vs. Placebo", "et al. Twenty": a full stop after these does not end the sentence.
_ABBREVIATION_END = re.compile(r"(?:\bvs|\be\.g|\bi\.e|\bal|\bFig|\bapprox|\bca|\bNo|\bDr|\bSt|"
                               r"\b[A-Z])\.$")


@dataclass(frozen=True)
class ChunkDraft:
    position: int
    section: str
    text: str

    def embedded_text(self, title: str) -> str:
        return f"{title}\n{self.text}" if title else self.text


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_sentences(text: str) -> list[str]:
    sentences: list[str] = []
    for part in _SENTENCE_END.split(text):
        part = part.strip()
        if not part:
            continue
        if sentences and _ABBREVIATION_END.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {part}"
        else:
            sentences.append(part)
    return sentences


@dataclass
class _Unit:
    section: str
    text: str
    tokens: int


def _split_long(unit: _Unit, budget: int) -> list[_Unit]:
    """A sentence longer than the budget, cut at word boundaries (rare: tables, lists)."""
    words = unit.text.split()
    pieces = max(1, math.ceil(unit.tokens / budget))
    per_piece = max(1, math.ceil(len(words) / pieces))
    return [_Unit(unit.section, " ".join(words[i:i + per_piece]),
                  math.ceil(unit.tokens * min(per_piece, len(words) - i) / len(words)))
            for i in range(0, len(words), per_piece)]


def chunk_article(title: str, sections: list[tuple[str, str]], *, max_tokens: int,
                  count_tokens: Callable[[list[str]], list[int]]) -> list[ChunkDraft]:
    """Balanced greedy packing of sentences into chunks of at most `max_tokens` word pieces."""
    sentences = [(label, sentence) for label, text in sections for sentence in
                 split_sentences(text)]
    if not sentences:
        return []
    title_tokens = min(count_tokens([title])[0], TITLE_TOKEN_CAP) if title else 0
    # Section labels ("METHODS: ") cost a few tokens; the margin keeps their share covered.
    budget = max(32, max_tokens - SPECIAL_TOKENS - title_tokens - 8)
    counts = count_tokens([sentence for _label, sentence in sentences])
    units: list[_Unit] = []
    previous_label: str | None = None
    for (label, sentence), tokens in zip(sentences, counts, strict=True):
        # "LABEL: " is written once per section run; a continuation chunk repeats it, which
        # the budget's margin covers.
        unit = _Unit(label, sentence, tokens + (3 if label and label != previous_label else 0))
        previous_label = label
        units.extend(_split_long(unit, budget) if unit.tokens > budget else [unit])
    total = sum(unit.tokens for unit in units)
    # Aim for equal-sized chunks rather than full ones followed by a scrap.
    target = math.ceil(total / math.ceil(total / budget))

    groups: list[list[_Unit]] = [[]]
    size = 0
    for unit in units:
        if groups[-1] and (size + unit.tokens > budget or
                           (size >= target and size + unit.tokens > target + unit.tokens // 2)):
            groups.append([])
            size = 0
        groups[-1].append(unit)
        size += unit.tokens

    drafts = []
    for position, group in enumerate(groups):
        parts: list[str] = []
        labels: list[str] = []
        current: str | None = None
        for unit in group:
            if unit.section != current:
                current = unit.section
                if unit.section:
                    labels.append(unit.section)
                parts.append(f"{unit.section}: {unit.text}" if unit.section else unit.text)
            else:
                parts.append(unit.text)
        drafts.append(ChunkDraft(position, ", ".join(labels)[:SECTION_FIELD_LENGTH],
                                 " ".join(parts)))
    return drafts
