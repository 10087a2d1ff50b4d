from django.urls import path

from review import views

app_name = "review"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("next", views.claim_next, name="claim_next"),
    path("items/<int:item_id>/", views.item_detail, name="item"),
    path("items/<int:item_id>/claim", views.claim, name="claim"),
    path("items/<int:item_id>/release", views.release, name="release"),
    path("items/<int:item_id>/decide", views.decide, name="decide"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("phi-holds/", views.phi_holds, name="phi_holds"),
    path("phi-holds/<int:item_id>/clear", views.phi_clear, name="phi_clear"),
    path("exports/", views.export_create, name="export_create"),
    path("exports/<int:batch_id>/retry", views.export_retry, name="export_retry"),
    path("exports/<int:batch_id>/status", views.export_status, name="export_status"),
    path("exports/<int:batch_id>/<str:kind>", views.export_download, name="export_download"),
]
