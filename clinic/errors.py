"""The server-error handler (config/urls.py `handler500`): a database that is unreachable for a
moment (a restart, a failover) is a 503 that tells the user to send the request again, with
Retry-After; any other unhandled error is the logged 500. API paths get JSON, pages get HTML."""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader

DATABASE_UNAVAILABLE = (
    "The database is unavailable for a moment (it may be restarting), so this request was not "
    "completed. Wait a few seconds and send it again; if you had sent a question, check your "
    "questions first: one that was saved is answered there.")
SERVER_ERROR = "The server hit an error it could not handle; it is logged. Try again in a moment."
RETRY_AFTER_SECONDS = 5


def _wants_json(request: HttpRequest) -> bool:
    return (request.path.startswith("/api/")
            or request.headers.get("Accept", "").startswith("application/json"))


def server_error(request: HttpRequest) -> HttpResponse:
    error = sys.exc_info()[1]
    unavailable = isinstance(error, (OperationalError, InterfaceError))
    status = 503 if unavailable else 500
    if _wants_json(request):
        response: HttpResponse = JsonResponse(
            {"error": DATABASE_UNAVAILABLE if unavailable else SERVER_ERROR}, status=status)
    else:
        template = loader.get_template("503.html" if unavailable else "500.html")
        # No request context: the session, the user and the context processors all need the
        # database, which may be what failed.
        response = HttpResponse(template.render({"message": DATABASE_UNAVAILABLE}),
                                status=status)
    if unavailable:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
