from django.contrib import admin

from clinic.models import Claim, Consultation, DeepConsultStep, Feedback, RetrievedPassage


class PassageInline(admin.TabularInline):
    model = RetrievedPassage
    extra = 0
    fields = ("rank", "pmid", "title", "score", "retracted", "sub_question")
    readonly_fields = fields
    can_delete = False


class ClaimInline(admin.TabularInline):
    model = Claim
    extra = 0
    fields = ("position", "text", "citations", "support_score", "supported")
    readonly_fields = fields
    can_delete = False


class StepInline(admin.TabularInline):
    model = DeepConsultStep
    extra = 0
    fields = ("position", "kind", "status", "tokens", "started_at", "finished_at")
    readonly_fields = fields
    can_delete = False


@admin.register(Consultation)
class ConsultationAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "mode", "status", "routed_capability", "abstained",
                    "support_rate", "cost", "created_at"]
    list_filter = ["mode", "status", "routed_capability", "abstained"]
    search_fields = ["question"]
    list_select_related = ["user"]
    readonly_fields = [field.name for field in Consultation._meta.fields]
    inlines = [PassageInline, ClaimInline, StepInline]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records that are written only by their services: visible here, never edited by hand."""

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    """A clinician's feedback is their record of what they were shown: nobody adds, edits or
    deletes it by hand, admins included (it feeds the review queue and training exports)."""

    list_display = ["id", "consultation", "user", "helpful", "created_at"]
    list_filter = ["helpful"]
    list_select_related = ["user", "consultation"]
