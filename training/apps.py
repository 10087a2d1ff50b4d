from django.apps import AppConfig


class TrainingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "training"

    def ready(self) -> None:
        from training import reconcile  # noqa: F401  (registers its jobs with jobs.reconcile)
