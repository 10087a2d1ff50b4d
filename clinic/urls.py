from django.urls import path

from clinic import literature, views

app_name = "clinic"

urlpatterns = [
    path("", views.ask, name="ask"),
    path("history/", views.history, name="history"),
    path("literature/", literature.literature, name="literature"),
    path("consultations/<int:consultation_id>/", views.consultation_detail, name="consultation"),
    path("consultations/<int:consultation_id>/snapshot", views.consultation_snapshot_json,
         name="snapshot"),
    path("consultations/<int:consultation_id>/events", views.consultation_events, name="events"),
    path("consultations/<int:consultation_id>/retry", views.consultation_retry_view,
         name="retry"),
    path("consultations/<int:consultation_id>/cancel", views.consultation_cancel_view,
         name="cancel"),
    path("consultations/<int:consultation_id>/feedback", views.feedback_view, name="feedback"),
]
