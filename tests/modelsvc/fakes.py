"""A deterministic stand-in for the sentence embedding: hashed bag of words, normalised."""

from __future__ import annotations

import re
import zlib

import numpy as np


def bag_of_words_embed(texts: list[str], dim: int = 384) -> np.ndarray:
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]{3,}", text.lower()):
            vectors[row, zlib.crc32(word.encode()) % dim] += 1.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)
