"""Reads for the review pages and the dashboard, each in a fixed number of queries."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, Prefetch, Q, QuerySet
from django.db.models.functions import TruncDate
from django.http import Http404
from django.utils import timezone

from clinic.models import Claim, Feedback, RetrievedPassage
from clinic.roles import is_admin
from review.models import ReviewDecision, ReviewItem

OPEN_STATUSES = [ReviewItem.Status.PENDING, ReviewItem.Status.NEEDS_ADJUDICATION,
                 ReviewItem.Status.ESCALATED]


def review_queue(*, reviewer: User, reason: str = "", model: str = "", specialty: str = "",
                 since: date | None = None, until: date | None = None,
                 status: str = "") -> QuerySet[ReviewItem]:
    """Open items in review order: most urgent reason first, oldest first within it."""
    statuses = OPEN_STATUSES if is_admin(reviewer) else [ReviewItem.Status.PENDING]
    if status:
        statuses = [s for s in statuses if s == status]
    queryset = (ReviewItem.objects.filter(status__in=statuses)
                .select_related("consultation", "claimed_by")
                .order_by("priority", "created_at", "id"))
    if reason:
        queryset = queryset.filter(reason_codes__contains=f"|{reason}|")
    if model:
        queryset = queryset.filter(model_name=model)
    if specialty:
        queryset = queryset.filter(specialty=specialty)
    if since:
        queryset = queryset.filter(created_at__date__gte=since)
    if until:
        queryset = queryset.filter(created_at__date__lte=until)
    # Nobody reviews the answer to their own question.
    queryset = queryset.exclude(consultation__user=reviewer)
    if not is_admin(reviewer):
        # An independent second review means never seeing your own item again.
        queryset = queryset.exclude(decisions__reviewer=reviewer,
                                    decisions__is_adjudication=False)
    return queryset


def review_filter_choices() -> dict[str, list[str]]:
    open_items = ReviewItem.objects.filter(status__in=OPEN_STATUSES)
    return {
        # order_by() first: the model's default ordering would otherwise join the DISTINCT
        # and list one name once per item.
        "models": sorted(m for m in open_items.order_by().values_list("model_name", flat=True)
                         .distinct() if m),
        "specialties": sorted(s for s in open_items.order_by().values_list("specialty", flat=True)
                              .distinct() if s),
    }


def review_item_for_reviewer(*, item_id: int, reviewer: User) -> ReviewItem:
    """An item with everything its page shows, fetched up front."""
    queryset = (ReviewItem.objects.select_related("consultation", "claimed_by")
                .prefetch_related(
                    Prefetch("consultation__passages",
                             queryset=RetrievedPassage.objects.order_by("rank")),
                    Prefetch("consultation__claims", queryset=Claim.objects.order_by("position")),
                    Prefetch("consultation__feedback", queryset=Feedback.objects.order_by(
                        "created_at")),
                    Prefetch("decisions", queryset=ReviewDecision.objects.select_related(
                        "reviewer").order_by("created_at", "id"))))
    item = queryset.filter(pk=item_id).first()
    if item is None:
        raise Http404("No such review item.")
    return item


def current_round_visible(item: ReviewItem, viewer: User,
                          decisions: Iterable[ReviewDecision] | None = None) -> bool:
    """May `viewer` see the decisions of the item's current round?

    Reviews are blind: until a reviewer has decided in this round, what others decided in it
    (the kind, the note, the correction) stays hidden, or a second review only echoes the
    first. An admin adjudicating a disagreement or an escalation sees everything, and so does
    everyone once the round is resolved. Pass the item's prefetched decisions to save a query.
    """
    if item.status == ReviewItem.Status.DONE:
        return True
    if item.status in (ReviewItem.Status.NEEDS_ADJUDICATION,
                       ReviewItem.Status.ESCALATED) and is_admin(viewer):
        return True
    if decisions is None:
        return item.decisions.filter(reviewer=viewer, round=item.round,
                                     is_adjudication=False).exists()
    return any(decision.reviewer_id == viewer.pk and decision.round == item.round
               and not decision.is_adjudication for decision in decisions)


def decisions_visible_to(item: ReviewItem, viewer: User) -> tuple[list[ReviewDecision], bool]:
    """(the decisions `viewer` may see, whether some of the current round are held back).
    Earlier rounds are history and always shown; the current round only as above."""
    decisions = list(item.decisions.all())
    if current_round_visible(item, viewer, decisions):
        return decisions, False
    return [decision for decision in decisions if decision.round != item.round], True


@dataclass(frozen=True)
class Series:
    label: str
    points: list[tuple[str, float]]


def _daily(rows: Iterable[Mapping[str, Any]], days: list[date]) -> list[tuple[str, float]]:
    by_day = {row["day"]: row["n"] for row in rows}
    return [(day.isoformat(), float(by_day.get(day, 0))) for day in days]


def _days(days: int, today: date | None = None) -> list[date]:
    today = today or timezone.now().date()
    return [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def reviewer_throughput(*, reviewer: User, days: int = 30) -> dict[str, Any]:
    window = _days(days)
    rows = list(ReviewDecision.objects.filter(reviewer=reviewer,
                                              created_at__date__gte=window[0])
                .annotate(day=TruncDate("created_at")).values("day")
                .annotate(n=Count("id")).order_by("day"))
    by_kind = dict(ReviewDecision.objects.filter(reviewer=reviewer).values_list("kind")
                   .annotate(n=Count("id")).order_by())
    return {"series": Series("Decisions per day", _daily(rows, window)),
            "total": sum(by_kind.values()), "by_kind": by_kind,
            "today": sum(row["n"] for row in rows if row["day"] == window[-1])}


AGE_BUCKETS = [("< 1 day", 1), ("1-3 days", 3), ("3-7 days", 7), ("1-4 weeks", 28),
               ("> 4 weeks", None)]


def queue_dashboard(*, days: int = 30, now: datetime | None = None) -> dict[str, Any]:
    """Queue size and age now, and throughput over time, for the admin dashboard."""
    now = now or timezone.now()
    window = _days(days, now.date())
    status_counts = dict(ReviewItem.objects.values_list("status").annotate(n=Count("id"))
                         .order_by())
    open_created = list(ReviewItem.objects.filter(status__in=OPEN_STATUSES)
                        .values_list("created_at", flat=True))
    ages = [(now - created).total_seconds() / 86400 for created in open_created]
    buckets: list[tuple[str, float]] = []
    lower = 0.0
    for label, upper in AGE_BUCKETS:
        buckets.append((label, float(sum(1 for age in ages if age >= lower
                                         and (upper is None or age < upper)))))
        lower = float(upper or 0)
    entered = list(ReviewItem.objects.filter(created_at__date__gte=window[0])
                   .annotate(day=TruncDate("created_at")).values("day")
                   .annotate(n=Count("id")).order_by("day"))
    resolved = list(ReviewItem.objects.filter(resolved_at__date__gte=window[0])
                    .annotate(day=TruncDate("resolved_at")).values("day")
                    .annotate(n=Count("id")).order_by("day"))
    decisions = list(ReviewDecision.objects.filter(created_at__date__gte=window[0])
                     .annotate(day=TruncDate("created_at")).values("day")
                     .annotate(n=Count("id")).order_by("day"))
    # Queue size at the end of each day = entered so far - resolved so far.
    before_window = ReviewItem.objects.filter(created_at__date__lt=window[0]).aggregate(
        entered=Count("id"), resolved=Count("id", filter=Q(resolved_at__date__lt=window[0])))
    size = before_window["entered"] - before_window["resolved"]
    entered_series = _daily(entered, window)
    resolved_series = _daily(resolved, window)
    sizes = []
    for (day, came), (_, went) in zip(entered_series, resolved_series, strict=True):
        size += int(came) - int(went)
        sizes.append((day, float(size)))
    return {
        "open": sum(status_counts.get(s, 0) for s in OPEN_STATUSES),
        "status_counts": {ReviewItem.Status(s).label: n for s, n in status_counts.items()},
        "oldest_days": round(max(ages), 1) if ages else 0,
        "median_age_days": round(sorted(ages)[len(ages) // 2], 1) if ages else 0,
        "age_buckets": buckets,
        "queue_size": Series("Open items at end of day", sizes),
        "resolved": Series("Items resolved per day", resolved_series),
        "entered": Series("Items queued per day", entered_series),
        "decisions": Series("Decisions per day", _daily(decisions, window)),
    }


def reviewer_agreement() -> list[dict[str, Any]]:
    """Cohen's kappa for each pair of reviewers over the items both decided (same round),
    blind decisions only: a vote cast after seeing the other's is not independent, and would
    inflate agreement."""
    from sklearn.metrics import cohen_kappa_score

    votes: dict[tuple[int, int], dict[int, str]] = defaultdict(dict)
    names: dict[int, str] = {}
    for item_id, round_, reviewer_id, username, kind in (
            ReviewDecision.objects.filter(is_adjudication=False, blind=True)
            .values_list("item_id", "round", "reviewer_id", "reviewer__username", "kind")):
        votes[(item_id, round_)][reviewer_id] = kind
        names[reviewer_id] = username
    pairs: dict[tuple[int, int], list[tuple[str, str]]] = defaultdict(list)
    for by_reviewer in votes.values():
        for first, second in itertools.combinations(sorted(by_reviewer), 2):
            pairs[(first, second)].append((by_reviewer[first], by_reviewer[second]))
    report = []
    for (first, second), labels in sorted(pairs.items()):
        left = [a for a, _ in labels]
        right = [b for _, b in labels]
        agreement = sum(a == b for a, b in labels) / len(labels)
        kappa = float(cohen_kappa_score(left, right)) if len(set(left + right)) > 1 else 1.0
        report.append({"reviewers": (names[first], names[second]), "items": len(labels),
                       "agreement": round(agreement, 3),
                       "kappa": None if math.isnan(kappa) else round(kappa, 3)})
    return report
