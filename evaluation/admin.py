from typing import Any

from django.contrib import admin

from clinic.admin import ReadOnlyAdmin
from evaluation.gate import admin_promote_action
from evaluation.models import EvalRun
from modelsvc.admin import ServedModelAdmin
from modelsvc.models import ServedModel


@admin.register(EvalRun)
class EvalRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "suite", "status", "created_at"]
    list_filter = ["suite", "status"]


class GatedServedModelAdmin(ServedModelAdmin):
    """The registry's admin with promotion, which only the evaluation gate may grant."""

    actions = ["promote_through_gate"]

    @admin.action(description="Promote to serving (only if the evaluation gate passes)")
    def promote_through_gate(self, request: Any, queryset: Any) -> Any:
        return admin_promote_action(self, request, queryset)


admin.site.unregister(ServedModel)
admin.site.register(ServedModel, GatedServedModelAdmin)
