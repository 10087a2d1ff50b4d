"""Read settings from the environment, failing loudly with a message a person can act on.

Every variable read here is recorded in ``READ_FROM_ENV`` so a test can check that each
one is documented in ``.env.example`` and README.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

READ_FROM_ENV: dict[str, str] = {}
SUPPORTED_DATABASE_ENGINES = {"django.db.backends.sqlite3", "django.db.backends.postgresql"}

_env = environ.Env()


def _raw(name: str) -> str | None:
    """The value of NAME, or of the file named by NAME_FILE (for secrets)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as error:
            raise ImproperlyConfigured(
                f"{name}_FILE points at {file_name!r}, which cannot be read ({error.strerror}). "
                f"Fix the path or set {name} directly."
            ) from error
    return os.environ.get(name)


def _fail(name: str, raw: str, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"Setting {name}={raw!r} is not valid: expected {expected}. "
        f"Fix it in your environment or .env file (see .env.example)."
    )


def env_str(name: str, default: str, *, help: str = "") -> str:
    READ_FROM_ENV[name] = help
    raw = _raw(name)
    return default if raw is None or raw == "" else raw


def env_bool(name: str, default: bool, *, help: str = "") -> bool:
    READ_FROM_ENV[name] = help
    raw = _raw(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise _fail(name, raw, "true or false")


def _number(name: str, default: Any, cast: Callable[[str], Any], expected: str,
            minimum: float | None, maximum: float | None) -> Any:
    raw = _raw(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw.strip())
    except ValueError:
        raise _fail(name, raw, expected) from None
    if minimum is not None and value < minimum:
        raise _fail(name, raw, f"{expected} of at least {minimum}")
    if maximum is not None and value > maximum:
        raise _fail(name, raw, f"{expected} of at most {maximum}")
    return value


def env_int(name: str, default: int, *, minimum: int | None = None,
            maximum: int | None = None, help: str = "") -> int:
    READ_FROM_ENV[name] = help
    return int(_number(name, default, int, "a whole number", minimum, maximum))


def env_float(name: str, default: float, *, minimum: float | None = None,
              maximum: float | None = None, help: str = "") -> float:
    READ_FROM_ENV[name] = help
    return float(_number(name, default, float, "a number", minimum, maximum))


def env_list(name: str, default: list[str], *, help: str = "") -> list[str]:
    READ_FROM_ENV[name] = help
    raw = _raw(name)
    if raw is None or raw == "":
        return list(default)
    if raw.strip().lower() == "none":
        return []
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: list[str], *, help: str = "") -> str:
    READ_FROM_ENV[name] = help
    raw = _raw(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise _fail(name, raw, "one of " + ", ".join(choices))
    return raw


def env_database(name: str, default: str, *, help: str = "") -> dict[str, Any]:
    READ_FROM_ENV[name] = help
    raw = _raw(name) or default
    try:
        config = _env.db_url_config(raw)
    except Exception as error:  # django-environ raises several types for a bad URL
        raise _fail(name, raw, "a database URL such as sqlite:///path/db.sqlite3 or "
                    "postgres://user:password@host:5432/name") from error
    if config.get("ENGINE") not in SUPPORTED_DATABASE_ENGINES:
        raise _fail(name, raw, "a database URL with a supported scheme (sqlite:// or postgres://)")
    return config


def env_url(name: str, default: str, *, schemes: tuple[str, ...], help: str = "") -> str:
    READ_FROM_ENV[name] = help
    raw = _raw(name)
    value = default if raw is None or raw == "" else raw.strip()
    if value and not value.startswith(tuple(f"{scheme}://" for scheme in schemes)):
        raise _fail(name, value, "a URL starting with " + " or ".join(f"{s}://" for s in schemes))
    return value.rstrip("/") if value else value
