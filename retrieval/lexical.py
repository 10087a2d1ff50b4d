"""The one tokenizer BM25 uses, for documents at build time and for queries at search time."""

from __future__ import annotations

import re
import threading

import Stemmer
from bm25s.stopwords import STOPWORDS_EN

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_STOPWORDS = frozenset(STOPWORDS_EN)
TOKENIZER_NAME = "lower-word2-en-stop-snowball-v1"
_local = threading.local()  # a Stemmer object is not thread-safe


def _stemmer() -> Stemmer.Stemmer:
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


def tokenize(text: str) -> list[str]:
    return _stemmer().stemWords([token for token in _TOKEN.findall(text.lower())
                                 if token not in _STOPWORDS])
