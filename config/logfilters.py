"""Log filters named by `LOGGING` in config/settings.py."""

import logging


class ForbiddenWithoutTraceback(logging.Filter):
    """A 403 is an expected answer (someone opened a page their role does not allow), not a
    fault: keep Django's one-line warning, drop the PermissionDenied traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) == 403:
            record.exc_info = None
            record.exc_text = None
        return True
