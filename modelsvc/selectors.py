"""Reads for dashboards: token, cost and latency totals per consultation, purpose and model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Avg, Count, Max, Q, QuerySet, Sum

from modelsvc.models import ModelCall

_TOTALS: dict[str, Any] = {
    "calls": Count("id"),
    "failed": Count("id", filter=Q(succeeded=False)),
    "sum_prompt_tokens": Sum("prompt_tokens", default=0),
    "sum_completion_tokens": Sum("completion_tokens", default=0),
    "sum_cost": Sum("cost", default=Decimal("0")),
    "sum_total_ms": Sum("total_ms", default=0),
    "avg_total_ms": Avg("total_ms"),
    "avg_time_to_first_token_ms": Avg("time_to_first_token_ms"),
    "max_total_ms": Max("total_ms"),
    "truncated": Count("id", filter=Q(finish_reason="length")),
}


def _totals(row: dict[str, Any]) -> CallTotals:
    # Aggregates cannot share a model field's name, hence the sum_ prefix on the way in.
    return CallTotals(**{key.removeprefix("sum_"): value for key, value in row.items()})


@dataclass(frozen=True)
class CallTotals:
    calls: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    total_ms: int
    avg_total_ms: float | None
    avg_time_to_first_token_ms: float | None
    max_total_ms: int | None
    truncated: int


def _calls(*, since: datetime | None = None, until: datetime | None = None,
           ) -> QuerySet[ModelCall]:
    calls = ModelCall.objects.all()
    if since is not None:
        calls = calls.filter(created_at__gte=since)
    if until is not None:
        calls = calls.filter(created_at__lt=until)
    return calls


def consultation_call_totals(consultation_id: int) -> CallTotals:
    """All model calls of one answer or deep consult, every stage together."""
    return _totals(ModelCall.objects.filter(consultation_id=consultation_id)
                   .aggregate(**_TOTALS))


def consultation_totals_by_purpose(consultation_id: int) -> dict[str, CallTotals]:
    """Per stage (answer, plan, draft, judge, ...) of one consultation."""
    rows = (ModelCall.objects.filter(consultation_id=consultation_id)
            .values("purpose").annotate(**_TOTALS).order_by("purpose"))
    return {str(row["purpose"]): _totals({k: v for k, v in row.items() if k != "purpose"})
            for row in rows}


def totals_by_purpose(*, since: datetime | None = None,
                      until: datetime | None = None) -> dict[str, CallTotals]:
    rows = _calls(since=since, until=until).values("purpose").annotate(**_TOTALS).order_by(
        "purpose")
    return {str(row["purpose"]): _totals({k: v for k, v in row.items() if k != "purpose"})
            for row in rows}


def totals_by_model(*, since: datetime | None = None,
                    until: datetime | None = None) -> dict[str, CallTotals]:
    """Keyed by the model value sent (an adapter name for a LoRA adapter)."""
    rows = _calls(since=since, until=until).values("model_name").annotate(**_TOTALS).order_by(
        "model_name")
    return {str(row["model_name"]): _totals({k: v for k, v in row.items()
                                             if k != "model_name"}) for row in rows}
