from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)
from rest_framework.permissions import IsAuthenticated

from clinic import health

# A database that is briefly unreachable is a 503 with Retry-After, not a 500 (clinic/errors.py).
handler500 = "clinic.errors.server_error"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("clinic.api_urls")),
    # The schema and its docs need a login: a token or session gets the schema (401 without);
    # a browser without a session is sent to the login page for the docs.
    path("api/v1/schema", SpectacularAPIView.as_view(permission_classes=[IsAuthenticated]),
         name="api-schema"),
    path("api/v1/docs", login_required(SpectacularSwaggerSplitView.as_view(
        url_name="api-schema", permission_classes=[IsAuthenticated])), name="api-docs"),
    path("api/v1/redoc", login_required(SpectacularRedocView.as_view(
        url_name="api-schema", permission_classes=[IsAuthenticated])), name="api-redoc"),
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("evaluation/", include("evaluation.urls")),
    path("training/", include("training.urls")),
    path("review/", include("review.urls")),
    path("", include("clinic.urls")),
]
