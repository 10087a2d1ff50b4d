from django.apps import AppConfig


class ReviewConfig(AppConfig):
    name = "review"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects to the clinic's answer signals; registers this app's jobs with jobs.reconcile.
        from review import receivers, reconcile  # noqa: F401
