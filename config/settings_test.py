"""Test settings: the real settings, with a fast password hasher and in-memory email."""

from config.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

# The test database is a file, not SQLite's in-memory default, so that real Celery workers
# and the ASGI server started by the tests (other processes and threads) see the same rows.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}  # noqa: F405

# The test client and the live servers speak plain http, whatever DJANGO_ALLOWED_HOSTS says
# (tests/test_deploy_check.py checks the production settings in a subprocess instead).
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
