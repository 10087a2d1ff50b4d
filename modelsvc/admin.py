from __future__ import annotations

from typing import Any

from django.contrib import admin, messages

from modelsvc.models import FROZEN_ONCE_PROMOTED, ModelCall, RouterVersion, ServedModel

HISTORY_PROTECTS_MESSAGE = (
    "A served model with evaluation runs, promotion decisions or model calls cannot be deleted: "
    "that history refers to it. Leave it in the registry (once retired it serves nothing); to "
    "change a model, register the change as a new model and take it through the gate.")


@admin.register(ServedModel)
class ServedModelAdmin(admin.ModelAdmin):
    list_display = ("name", "capability", "status", "served_name", "base_model",
                    "cost_per_1k_prompt", "cost_per_1k_completion", "updated_at")
    list_filter = ("status", "capability")
    search_fields = ("name", "served_name", "base_model")
    # Status changes only through the evaluation gate (the evaluation app adds the promote
    # action to this admin), never by hand.
    readonly_fields = ("status",)

    def get_readonly_fields(self, request: Any, obj: Any = None) -> Any:
        # A promoted model is what its runs measured: a change is a new row, not an edit.
        if obj is not None and obj.status != ServedModel.Status.CANDIDATE:
            return (*self.readonly_fields, *FROZEN_ONCE_PROMOTED)
        return self.readonly_fields

    def get_deleted_objects(self, objs: Any, request: Any) -> Any:
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        if protected:
            # Django lists what is in the way; say why, and what to do instead. The history's
            # read-only admins would otherwise show as "no permission to delete", which is not
            # the reason: nobody may delete it.
            messages.error(request, HISTORY_PROTECTS_MESSAGE)
            perms_needed = set()
        return deleted, model_count, perms_needed, protected


@admin.register(ModelCall)
class ModelCallAdmin(admin.ModelAdmin):
    list_display = ("created_at", "purpose", "model_name", "adapter", "prompt_tokens",
                    "completion_tokens", "cost", "time_to_first_token_ms", "total_ms",
                    "succeeded", "finish_reason")
    list_filter = ("succeeded", "purpose", "model_name")
    list_select_related = ("served_model",)
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in ModelCall._meta.fields]

    def has_add_permission(self, request: object) -> bool:  # type: ignore[override]
        return False


@admin.register(RouterVersion)
class RouterVersionAdmin(admin.ModelAdmin):
    list_display = ("version", "accuracy", "confidence_threshold", "train_size", "test_size",
                    "active", "created_at")
    readonly_fields = ("version", "path", "embedding_model", "classes", "accuracy", "metrics",
                       "train_size", "test_size", "created_at")
