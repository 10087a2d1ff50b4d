"""The system check that keeps Redis from handing a running job to a second worker.

With `acks_late`, Redis gives an unacknowledged message to another worker once the visibility
timeout has passed, even while the first worker is still on it. So every task of ours needs a
hard time limit, and the visibility timeout must be above the longest one; start-up fails
otherwise (an Error, not a Warning: two workers ingesting one file at once corrupts counts).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery, Task, current_app
from django.core.checks import Error, register
from django.utils.module_loading import autodiscover_modules

# Redis's own default when broker_transport_options sets none.
REDIS_DEFAULT_VISIBILITY_TIMEOUT = 3600


def visibility_timeout(app: Celery) -> int:
    options = app.conf.broker_transport_options or {}
    return int(options.get("visibility_timeout", REDIS_DEFAULT_VISIBILITY_TIMEOUT))


def our_tasks(app: Celery) -> list[Task]:
    """Every registered task but Celery's built-in ones (`celery.*`), after importing each
    app's tasks module, so a task nobody has imported yet is checked too."""
    # Not app.loader.import_default_modules(): Celery's Django fixup runs the system checks
    # from there, which would come back here.
    autodiscover_modules("tasks")
    return [task for name, task in sorted(app.tasks.items()) if not name.startswith("celery.")]


def time_limit_errors(tasks: Iterable[Task], *, visibility: int,
                      default_time_limit: float | None = None) -> list[Error]:
    errors: list[Error] = []
    for task in tasks:
        hard_limit = task.time_limit if task.time_limit is not None else default_time_limit
        if hard_limit is None:
            errors.append(Error(
                f"The Celery task {task.name} has no hard time limit, so a stuck run would hold "
                "its worker forever and Redis would hand it to a second worker after the "
                f"visibility timeout ({visibility} s).",
                hint=f"Give {task.name} time_limit= and soft_time_limit= in its decorator, "
                "below CELERY_VISIBILITY_TIMEOUT.",
                obj=task.name, id="jobs.E002"))
        elif hard_limit >= visibility:
            errors.append(Error(
                f"The hard time limit of {task.name} ({hard_limit:g} s) is not below the broker's "
                f"visibility timeout ({visibility} s): Redis would hand the still-running job to "
                "a second worker, so it would run twice at once.",
                hint=f"Set CELERY_VISIBILITY_TIMEOUT above {hard_limit:g} (with a few minutes' "
                f"margin), or lower the time limit of {task.name}.",
                obj=task.name, id="jobs.E001"))
    return errors


@register()
def time_limits_fit_the_visibility_timeout(app_configs: Any, **kwargs: Any) -> list[Error]:
    app = current_app
    return time_limit_errors(our_tasks(app), visibility=visibility_timeout(app),
                             default_time_limit=app.conf.task_time_limit)
