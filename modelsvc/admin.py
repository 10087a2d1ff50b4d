from __future__ import annotations

from typing import Any

from django.contrib import admin

from modelsvc.models import FROZEN_ONCE_PROMOTED, ModelCall, RouterVersion, ServedModel


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
