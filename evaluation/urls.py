from django.urls import path

from evaluation import views

app_name = "evaluation"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("runs/start", views.run_start, name="start"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/progress", views.run_progress, name="progress"),
    path("runs/<int:run_id>/cancel", views.run_cancel, name="cancel"),
    path("runs/<int:run_id>/resume", views.run_resume, name="resume"),
    path("results/<int:result_id>/", views.result_detail, name="result"),
    path("compare/", views.compare, name="compare"),
    path("models/", views.models_gate, name="models"),
    path("models/rollback", views.models_rollback, name="rollback"),
]
