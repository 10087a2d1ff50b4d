"""Retrieved text is untrusted data. Find instruction-like spans inside passages (prompt
injection), and catch an answer that obeys or echoes them.

Two lines of defence: the prompt redacts instruction-like spans and fences passages as data
(see prompts.py); after generation, `check_injection` withholds an answer that repeats text
from such a span, carries a canary-like token from one, or itself issues such instructions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Phrases that address a language model rather than a reader of a scientific abstract.
_INSTRUCTION = re.compile(
    r"(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|your\s+)*"
    r"(?:previous|prior|above|earlier|preceding|system|original)?\s*"
    r"(?:instructions?|prompts?|rules|directions|guidelines|context)"
    r"|\bnew\s+instructions?\b"
    r"|\bsystem\s+prompt\b"
    r"|\byou\s+are\s+now\b"
    r"|\bact\s+as\s+(?:an?\s+)?(?:ai|assistant|language\s+model|chatbot)\b"
    r"|\b(?:as\s+an?\s+)?(?:ai|language\s+model|assistant|chatbot)\s*[,:]\s*(?:you\s+)?must\b"
    r"|\b(?:respond|reply|answer|output|print|say|write|repeat)\s+(?:only\s+with|exactly|"
    r"(?:with\s+)?(?:only\s+)?the\s+(?:word|phrase|text|string|code|secret|canary))\b"
    r"|\binclude\s+the\s+(?:word|phrase|text|string|code)\b"
    r"|^\s*(?:###\s*)?(?:system|assistant|instruction)s?\s*:"
    r"|<\s*/?\s*(?:system|instructions?|im_start|im_end)\b",
    re.IGNORECASE | re.MULTILINE,
)
# In an answer, only phrases no clinical text contains count on their own.
_ANSWER_RED_FLAG = re.compile(
    r"(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)*"
    r"(?:previous|prior|above|earlier|preceding|system|original)\s+(?:instructions?|prompts?)"
    r"|\bsystem\s+prompt\b|<\s*/?\s*(?:system|im_start|im_end|passages?)\b",
    re.IGNORECASE)
# Tokens nobody writes in prose: SHOUTING_WORDS with digits or separators, long hex strings.
_CANARY = re.compile(r"\b(?=[A-Z0-9_-]*[A-Z])(?=[A-Z0-9_-]*[0-9_-])[A-Z0-9][A-Z0-9_-]{5,}\b"
                     r"|\b[0-9a-f]{12,}\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9]+")
SHINGLE_WORDS = 6


@dataclass(frozen=True)
class InjectedSpan:
    passage: int | str
    start: int
    end: int
    text: str


Passages = Mapping[int, str] | Mapping[int | str, str] | Iterable[str]


def find_injections(passages: Passages) -> list[InjectedSpan]:
    """The sentences of each passage that read as instructions to a model."""
    items = passages.items() if isinstance(passages, Mapping) else enumerate(passages, 1)
    spans: list[InjectedSpan] = []
    for key, text in items:
        start = 0
        for piece in _SENTENCE_END.split(text) + [""]:
            if not piece:
                continue
            begin = text.find(piece, start)
            end = begin + len(piece)
            start = end
            if _INSTRUCTION.search(piece):
                spans.append(InjectedSpan(key, begin, end, piece))
    return spans


def redact_injections(text: str) -> tuple[str, int]:
    """The passage with instruction-like sentences replaced by a marker, and how many.

    In a passage that carries an instruction, canary-like tokens elsewhere in it go too: the
    payload an injection asks to repeat often sits in the sentence before.
    """
    spans = find_injections([text])
    for span in reversed(spans):
        text = text[:span.start] + "[instruction-like text removed]" + text[span.end:]
    if spans:
        text = _CANARY.sub("[removed]", text)
    return text, len(spans)


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def check_injection(answer_text: str, passages: Passages) -> bool:
    """True when the answer shows signs of following text injected into a passage."""
    if not answer_text.strip():
        return False
    if _ANSWER_RED_FLAG.search(answer_text):
        return True
    texts: dict[int | str, str] = dict(
        passages.items() if isinstance(passages, Mapping) else enumerate(passages, 1))
    spans = find_injections(texts)
    if not spans:
        return False
    answer_upper = answer_text.upper()
    answer_shingles = _shingles(answer_text)
    # A passage that carries an instruction is poisoned as a whole: its odd tokens (the canary
    # may sit in the sentence before the instruction) must not reach an answer.
    for key in {span.passage for span in spans}:
        for token in _CANARY.findall(texts[key]):
            if token.upper() in answer_upper:
                return True
    for span in spans:
        for quoted in re.findall(r"[\"'“‘]([^\"'”’]{4,80})[\"'”’]", span.text):
            if quoted.strip() and quoted.strip().lower() in answer_text.lower():
                return True
        if answer_shingles & _shingles(span.text):
            return True
    return False
