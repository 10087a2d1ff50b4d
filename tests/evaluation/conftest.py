from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def short_answers(settings: Any) -> None:
    # The tiny random model always talks until max_tokens; short answers keep the suite fast.
    settings.EVAL_MAX_TOKENS = 24
    settings.EVAL_CHOICE_MAX_TOKENS = 8
