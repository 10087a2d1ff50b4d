"""The project's URLs plus the evaluation pages (mounted at /evaluation/ in config/urls.py)."""

from django.urls import include, path

from config.urls import urlpatterns as project_urlpatterns

urlpatterns = [path("evaluation/", include("evaluation.urls")), *project_urlpatterns]
