"""Cross-cutting request handling: login everywhere, and a strict Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse

# Only our own scripts and styles run; model output and abstracts are text, never markup.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)

PUBLIC_PREFIXES = ("/healthz", "/readyz", "/accounts/login/", "/static/", "/admin/login/",
                   "/favicon.ico")


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith(("/admin/", "/api/v1/docs", "/api/v1/redoc")):
            # The admin, Swagger UI and Redoc ship inline scripts and styles of their own.
            response.setdefault(
                "Content-Security-Policy",
                CONTENT_SECURITY_POLICY.replace("script-src 'self'", "script-src 'self' "
                                                "'unsafe-inline'").replace(
                    "style-src 'self'", "style-src 'self' 'unsafe-inline'"),
            )
        else:
            response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.setdefault("Referrer-Policy", "same-origin")
        return response


class LoginRequiredEverywhereMiddleware:
    """Everything but the login page, health checks and static files needs a login.

    API requests authenticate with a token inside DRF, so they get a JSON 401 there
    instead of a redirect here.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        if path.startswith(PUBLIC_PREFIXES) or path.startswith("/api/"):
            return self.get_response(request)
        if not request.user.is_authenticated:
            if request.headers.get("Accept", "").startswith("application/json"):
                return JsonResponse({"error": "Log in first."}, status=401)
            return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
        return self.get_response(request)
