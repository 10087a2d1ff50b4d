from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self) -> None:
        # Registers the time-limit system check, the reconcile task and its worker_ready hook.
        from jobs import checks, reconcile  # noqa: F401
