"""Fixtures shared by the clinic tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.modelsvc.doubles import ModelServerDouble, Reply, completion


@pytest.fixture
def answer_double(settings: Any) -> Iterator[Any]:
    """serve(*sentences): the model server double streams these sentences as the answer (in
    token-sized pieces, so sentences end mid-stream as they do with a real model)."""
    started: list[ModelServerDouble] = []

    def serve(*sentences: str) -> ModelServerDouble:
        pieces = [word + " " for sentence in sentences for word in sentence.split()]
        double = ModelServerDouble([Reply(stream=pieces),
                                    Reply(body=completion(" ".join(sentences)))])
        double.__enter__()
        started.append(double)
        settings.MODEL_BASE_URL, settings.MODEL_NAME = double.base_url, "recorded-model"
        settings.MODEL_MAX_RETRIES = 0
        return double

    yield serve
    for double in started:
        double.__exit__()
