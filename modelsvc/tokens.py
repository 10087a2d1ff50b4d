"""Prompt budget: count tokens with the served model's own tokenizer (the `tokenizers` library on
its tokenizer.json, never transformers or torch) and fit passages into the context window."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from tokenizers import Tokenizer

from modelsvc.errors import PromptTooLongError
from modelsvc.prompts import PromptPassage, build_answer_messages, format_passage

logger = logging.getLogger(__name__)

# Chat templates add role markers around each message; measured 5-6 tokens per message on the
# Llama/SmolLM2 templates, kept generous because vLLM rejects a prompt one token too long.
TOKENS_PER_MESSAGE = 8
TEMPLATE_MARGIN = 32
# A passage cut shorter than this carries too little evidence to be worth citing.
MIN_PASSAGE_TOKENS = 48
# Without the model's tokenizer, assume a dense tokenizer (medical words split finely).
CHARS_PER_TOKEN_FALLBACK = 3.0


def tokenizer_path() -> Path | None:
    configured = settings.MODEL_TOKENIZER or settings.MODEL_NAME
    path = Path(configured)
    if path.is_dir():
        path = path / "tokenizer.json"
    return path if path.is_file() else None


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Tokenizer:
    return Tokenizer.from_file(path)


@lru_cache(maxsize=1)
def _warn_fallback(configured: str) -> None:
    logger.warning("no tokenizer.json for %r (set MODEL_TOKENIZER); estimating tokens from "
                   "characters", configured)


def get_tokenizer() -> Tokenizer | None:
    path = tokenizer_path()
    if path is None:
        _warn_fallback(settings.MODEL_TOKENIZER or settings.MODEL_NAME)
        return None
    return _load(str(path), path.stat().st_mtime)


def count_tokens(text: str) -> int:
    tokenizer = get_tokenizer()
    if tokenizer is None:
        return math.ceil(len(text) / CHARS_PER_TOKEN_FALLBACK)
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def count_message_tokens(messages: list[dict[str, Any]]) -> int:
    return (sum(count_tokens(str(m.get("content", ""))) + TOKENS_PER_MESSAGE for m in messages)
            + TEMPLATE_MARGIN)


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    tokenizer = get_tokenizer()
    if tokenizer is None:
        cut = text[:int(max_tokens * CHARS_PER_TOKEN_FALLBACK)]
    else:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) <= max_tokens:
            return text
        cut = text[:encoding.offsets[max_tokens - 1][1]]
    # End on a word boundary and say it was cut, so the model does not cite half a sentence.
    if " " in cut:
        cut = cut[:cut.rstrip().rfind(" ")]
    return cut.rstrip() + " [...]"


def fit_passages(question: str, passages: list[PromptPassage], *, max_completion_tokens: int,
                 patient_note: str = "") -> list[PromptPassage]:
    """The passages, in order, that fit the context with the question and the completion.

    The last one that does not fit whole is truncated when enough of it remains; the rest are
    dropped. Numbers are kept, so citations still point at the stored passages.
    """
    context = int(settings.MODEL_CONTEXT_TOKENS)
    base = count_message_tokens(build_answer_messages(question, [], patient_note=patient_note))
    budget = context - max_completion_tokens - base
    if budget < 0:
        question_tokens = count_tokens(question) + count_tokens(patient_note)
        raise PromptTooLongError(
            f"The question is too long for the model: it takes about {question_tokens} tokens "
            f"and at most {max(context - max_completion_tokens - (base - question_tokens), 0)} "
            "fit; shorten the question or the patient note.")
    fitted: list[PromptPassage] = []
    for passage in passages:
        # format_passage adds the fence and title; the +8 covers the number list in the ask.
        cost = count_tokens(format_passage(passage)) + 8
        if cost <= budget:
            fitted.append(passage)
            budget -= cost
            continue
        overhead = cost - count_tokens(passage.text)
        room = budget - overhead - 4
        if room >= MIN_PASSAGE_TOKENS:
            fitted.append(replace(passage, text=truncate_to_tokens(passage.text, room)))
        break
    if len(fitted) < len(passages):
        logger.info("prompt budget kept %d of %d passages (context %d tokens)",
                    len(fitted), len(passages), context)
    return fitted
