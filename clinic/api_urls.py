from django.urls import path

from clinic import api

urlpatterns = [
    path("consultations", api.ConsultationListCreate.as_view(), name="api-consultations"),
    path("consultations/<int:consultation_id>", api.ConsultationDetail.as_view(),
         name="api-consultation"),
    path("consultations/<int:consultation_id>/stream", api.consultation_stream,
         name="api-consultation-stream"),
    path("consultations/<int:consultation_id>/cancel", api.ConsultationCancel.as_view(),
         name="api-consultation-cancel"),
]
