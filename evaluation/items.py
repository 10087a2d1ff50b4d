"""What every suite is made of: items to answer, and the one error a run raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class EvalError(Exception):
    """A run cannot start or go on; the message says what to do."""


@dataclass(frozen=True)
class EvalItem:
    item_id: str
    question: str
    gold: str
    subset: str = ""
    options: dict[str, str] = field(default_factory=dict)
    gold_pmids: tuple[str, ...] = ()
    # Reviewed suite: the approved/corrected answer and the PMIDs it cites.
    reference: dict[str, Any] = field(default_factory=dict)
