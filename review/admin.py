from django.contrib import admin

from clinic.admin import ReadOnlyAdmin
from review.models import ExportBatch, PhiClearance, ReviewDecision, ReviewItem


@admin.register(ReviewItem)
class ReviewItemAdmin(ReadOnlyAdmin):
    list_display = ["id", "consultation", "priority", "status", "outcome", "phi_status",
                    "model_name", "specialty", "created_at"]
    list_filter = ["status", "outcome", "phi_status", "specialty"]
    list_select_related = ["consultation"]


@admin.register(ReviewDecision)
class ReviewDecisionAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "reviewer", "kind", "round", "is_adjudication", "created_at"]
    list_filter = ["kind", "is_adjudication"]
    list_select_related = ["item", "reviewer"]


@admin.register(PhiClearance)
class PhiClearanceAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "decision", "decided_by", "created_at"]
    list_filter = ["decision"]
    list_select_related = ["item", "decided_by"]


@admin.register(ExportBatch)
class ExportBatchAdmin(ReadOnlyAdmin):
    list_display = ["id", "format", "status", "progress", "sha256", "created_by", "created_at"]
    list_filter = ["format", "status"]
