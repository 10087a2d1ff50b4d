from django.urls import path

from training import views

app_name = "training"

urlpatterns = [
    path("", views.index, name="index"),
    path("sets/create", views.set_create, name="set_create"),
    path("runs/start", views.run_start, name="start"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/progress", views.run_progress, name="progress"),
    path("runs/<int:run_id>/cancel", views.run_cancel, name="cancel"),
    path("runs/<int:run_id>/resume", views.run_resume, name="resume"),
]
