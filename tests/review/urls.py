"""The project's URLs plus the review area, until config/urls.py includes it."""

from django.urls import include, path

from config.urls import urlpatterns as project_urlpatterns

urlpatterns = [path("review/", include("review.urls")), *project_urlpatterns]
