from django.contrib import admin

from training.models import TrainingRun, TrainingSet


@admin.register(TrainingSet)
class TrainingSetAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "sft_records", "dpo_records", "literature_articles", "created_at")
    readonly_fields = [field.name for field in TrainingSet._meta.fields]


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "method", "capability", "status", "step", "total_steps", "loss",
                    "served_model", "created_at")
    list_filter = ("status", "method", "capability")
    readonly_fields = [field.name for field in TrainingRun._meta.fields]
