"""The page a login locked out by django-axes gets: until when, and who can lift it sooner."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone


def lockout_ends(request: HttpRequest, username: str | None) -> datetime:
    """When the lockout of this account from this address ends: its last counted failure plus
    the cool-off (a try during the lockout is not counted, so this does not move)."""
    cool_off = get_cool_off(request) or timedelta(minutes=15)
    attempts = AccessAttempt.objects.filter(username=username)
    ip_address = getattr(request, "axes_ip_address", None)
    if ip_address:
        attempts = attempts.filter(ip_address=ip_address)
    last = attempts.order_by("-attempt_time").values_list("attempt_time", flat=True).first()
    return (last or timezone.now()) + cool_off


def lockout_response(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE. django-axes calls it as (request, response, credentials) from
    synchronous code and as (request, credentials) from asynchronous code: read neither."""
    username = get_client_username(request) or ""
    retry_at = lockout_ends(request, username)
    minutes = max(1, round((retry_at - timezone.now()).total_seconds() / 60))
    message = (f"Too many failed logins: this account is locked from your address until "
               f"{timezone.localtime(retry_at):%H:%M %Z} (about {minutes} min). Try again then, "
               "or ask an admin to unlock it now.")
    status = 429  # Too Many Requests, as django-axes answers by default
    retry_after = str(max(1, int((retry_at - timezone.now()).total_seconds())))
    response: HttpResponse
    if request.headers.get("Accept", "").startswith("application/json"):
        response = JsonResponse({"error": message, "retry_at": retry_at.isoformat()},
                                status=status)
    else:
        response = render(request, "registration/locked_out.html", {
            "username": username, "retry_at": retry_at, "minutes": minutes,
            "failure_limit": settings.AXES_FAILURE_LIMIT}, status=status)
    response["Retry-After"] = retry_after
    return response
