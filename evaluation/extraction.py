"""Reading the chosen option out of a model's answer, strictly.

Guided output (a JSON schema with an enum, which vLLM enforces) is used when the server supports
it; `transformers serve` rejects `response_format`, so the harness probes once per run and falls
back to plain text read by `parse_choice`. Anything this parser cannot read with confidence is
None ("unparseable"), reported as such, never guessed into a right or wrong answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

ANSWER_LINE = "Answer:"

# Key words match in any case ((?i:...)); an option letter must be a capital, so the article
# "a" is never read as option A.
_DECLARATION = (r"(?:^|(?<=[\s.*_#>]))(?i:(?:final\s+)?answer)\s*[*_]*\s*[:\-]"
                r"\s*[*_\s]*[\(\[]?\s*(?P<choice>{choices})\s*[\)\]]?(?![A-Za-z0-9])")
_SENTENCE = (r"\b(?i:(?:the\s+)?(?:correct\s+|best\s+|final\s+)?(?:answer|option)\s+is)"
             r"\s*[:\-]?\s*[*_\s]*[\(\[]?\s*(?P<choice>{choices})\s*[\)\]]?"
             r"(?![A-Za-z0-9])")
_WHOLE = r"^[\s*_\(\[\"']*(?P<choice>{choices})[\s*_\)\]\"'.!]*$"
_LEADING = r"^[\s*_\(\[]*(?P<choice>{choices})(?:[\)\].:,]|\s+-)\s"


def structured_schema(choices: Sequence[str], *, with_explanation: bool = False
                      ) -> dict[str, Any]:
    properties: dict[str, Any] = {"answer": {"type": "string", "enum": list(choices)}}
    required = ["answer"]
    if with_explanation:
        # Explanation first: the model writes its cited reasoning before committing.
        properties = {"explanation": {"type": "string"}, **properties}
        required = ["explanation", "answer"]
    return {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True,
        "schema": {"type": "object", "properties": properties, "required": required,
                   "additionalProperties": False}}}


def parse_structured(text: str, choices: Sequence[str]) -> tuple[str | None, str]:
    """(choice, explanation) from a guided JSON answer; (None, "") when it is not one."""
    try:
        payload = json.loads(text)
    except ValueError:
        return None, ""
    if not isinstance(payload, dict):
        return None, ""
    choice = _normalise(str(payload.get("answer", "")), choices)
    return choice, str(payload.get("explanation", ""))


def _normalise(value: str, choices: Sequence[str]) -> str | None:
    for choice in choices:
        if value.strip().lower() == choice.lower():
            return choice
    return None


def _pattern(template: str, choices: Sequence[str], letters: bool) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True))
    flags = re.MULTILINE | (0 if letters else re.IGNORECASE)
    return re.compile(template.format(choices=alternatives), flags)


def parse_choice(text: str, choices: Sequence[str], *,
                 option_texts: dict[str, str] | None = None) -> str | None:
    """The one choice the text commits to, or None.

    Read, in order: guided JSON; the last "Answer: X" line; a single distinct "the answer is
    X"; the whole reply being the choice; the reply opening with "X." / "(X)" / "Yes,"; the
    reply being exactly one option's text. Conflicting sentences make it unparseable.
    """
    text = (text or "").strip()
    if not text:
        return None
    structured, _ = parse_structured(text, choices)
    if structured:
        return structured
    letters = all(len(c) == 1 and c.isupper() for c in choices)

    def found(template: str) -> list[str]:
        return [_normalise(m.group("choice"), choices) or m.group("choice")
                for m in _pattern(template, choices, letters).finditer(text)]

    declared = found(_DECLARATION)
    if declared:
        return _normalise(declared[-1], choices)
    stated = set(found(_SENTENCE))
    if len(stated) == 1:
        return _normalise(stated.pop(), choices)
    if len(stated) > 1:
        return None
    for template in (_WHOLE, _LEADING):
        match = _pattern(template, choices, letters).search(text)
        if match:
            return _normalise(match.group("choice"), choices)
    if option_texts:
        bare = re.sub(r"[\s.!\"'*]+$", "", re.sub(r"^[\s\"'*]+", "", text)).lower()
        matches = [key for key, value in option_texts.items()
                   if value.strip().rstrip(".").lower() == bare]
        if len(matches) == 1:
            return matches[0]
    return None


def split_answer_line(text: str) -> str:
    """The answer without its closing "Answer: X" line, for claim parsing."""
    lines = (text or "").rstrip().splitlines()
    while lines and re.match(r"^\s*[*_#>\s]*(?:final\s+)?answer\s*[*_]*\s*[:\-]", lines[-1],
                             re.IGNORECASE):
        lines.pop()
    return "\n".join(lines).strip()
