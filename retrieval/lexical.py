"""The one tokenizer BM25 uses, for documents at build time and for queries at search time."""

from __future__ import annotations

import re

from bm25s.stopwords import STOPWORDS_EN

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_STOPWORDS = frozenset(STOPWORDS_EN)
TOKENIZER_NAME = "lower-word2-en-stop-sstem-v1"


def _s_stem(word: str) -> str:
    """Harman's S-stemmer: folds plurals only, so drug names and acronyms stay intact."""
    if len(word) > 4 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    return [_s_stem(token) for token in _TOKEN.findall(text.lower()) if token not in _STOPWORDS]
