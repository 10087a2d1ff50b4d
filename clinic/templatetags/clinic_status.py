"""`{{ consultation|display_status }}`: the display status (clinic.status) in list pages."""

from __future__ import annotations

from django import template

from clinic.models import Consultation
from clinic.status import DisplayStatus, consultation_display_status

register = template.Library()


@register.filter
def display_status(consultation: Consultation) -> DisplayStatus:
    # Steps only when the list prefetched them: a list page never runs a query per row.
    prefetched = getattr(consultation, "_prefetched_objects_cache", {})
    steps = list(prefetched["steps"]) if "steps" in prefetched else None
    return consultation_display_status(consultation, steps)
