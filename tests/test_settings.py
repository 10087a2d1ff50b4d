"""Settings come from the environment, fail loudly, and every one is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from config.env import READ_FROM_ENV

ROOT = Path(__file__).resolve().parent.parent
# Read by libraries or by the scripts, not by our settings module.
NOT_OURS = {"DJANGO_SETTINGS_MODULE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
            "TOKENIZERS_PARALLELISM", "CI", "PYTHON", "TORCH_INDEX_URL", "TEST_VAR_DIR",
            "TEST_EMBEDDED_REDIS_PORT", "PATH", "HOME", "DEBIAN_FRONTEND"}


def _settings_in_python_code() -> set[str]:
    names: set[str] = set()
    pattern = re.compile(
        r"""(?:os\.environ(?:\.get)?|os\.getenv|env_\w+)\(\s*["']([A-Z][A-Z0-9_]+)""")
    for package in ("config", "clinic", "modelsvc", "retrieval"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(pattern.findall(path.read_text()))
    return names - NOT_OURS


def test_every_setting_read_is_documented_in_env_example_and_readme() -> None:
    env_example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    names = set(READ_FROM_ENV) | _settings_in_python_code()
    assert len(names) > 20
    undocumented_example = sorted(n for n in names if f"{n}=" not in env_example)
    undocumented_readme = sorted(n for n in names if f"`{n}`" not in readme)
    assert undocumented_example == [], "add these to .env.example"
    assert undocumented_readme == [], "add these to the README settings table"


def _load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in READ_FROM_ENV or k == "VAR_DIR"}
    clean.update(env, DJANGO_SETTINGS_MODULE="config.settings")
    code = ("import django; django.setup(); from django.conf import settings; "
            "print(settings.DATABASES['default']['ENGINE'], settings.REDIS_URL, "
            "settings.MODEL_BASE_URL, settings.MODEL_READ_TIMEOUT)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=60)


def test_defaults_are_sqlite_bundled_redis_and_local_model_server(tmp_path: Path) -> None:
    result = _load_settings(VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    engine, redis_url, model_url, read_timeout = result.stdout.split()
    assert engine == "django.db.backends.sqlite3"
    assert redis_url == "redis://127.0.0.1:6390/0"
    assert model_url == "http://127.0.0.1:8011/v1"
    assert float(read_timeout) == 60.0
    assert (tmp_path / "secret_key").exists()


def test_urls_switch_to_postgresql_external_redis_and_vllm(tmp_path: Path) -> None:
    result = _load_settings(VAR_DIR=str(tmp_path), DATABASE_URL="postgres://u:p@db:5432/clinic",
                            REDIS_URL="redis://cache:6379/3",
                            MODEL_BASE_URL="http://gpu-host:8000/v1/", MODEL_NAME="qwen2.5-7b")
    assert result.returncode == 0, result.stderr
    engine, redis_url, model_url, _ = result.stdout.split()
    assert engine == "django.db.backends.postgresql"
    assert redis_url == "redis://cache:6379/3"
    assert model_url == "http://gpu-host:8000/v1"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MODEL_READ_TIMEOUT", "soon", "MODEL_READ_TIMEOUT='soon' is not valid: expected a number"),
        ("WEB_PORT", "99999", "WEB_PORT='99999' is not valid"),
        ("DJANGO_DEBUG", "maybe", "expected true or false"),
        ("DATABASE_URL", "mysqlx://nowhere", "DATABASE_URL"),
        ("REDIS_URL", "localhost:6379", "a URL starting with redis://"),
        ("LOCAL_MODEL", "gpt5", "one of smollm2, tiny"),
    ],
)
def test_a_bad_value_fails_loudly_naming_the_setting(tmp_path: Path, name: str, value: str,
                                                     expected: str) -> None:
    result = _load_settings(VAR_DIR=str(tmp_path), **{name: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert expected in result.stderr


def test_the_run_command_refuses_a_bad_setting_with_one_sentence(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in READ_FROM_ENV}
    clean.update(VAR_DIR=str(tmp_path), MODEL_CONNECT_TIMEOUT="-3")
    result = subprocess.run([sys.executable, "-m", "launcher.run"], cwd=ROOT, env=clean,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Cannot start: Setting MODEL_CONNECT_TIMEOUT='-3' is not valid" in result.stderr
    assert "Traceback" not in result.stderr


def test_secrets_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    clean = {k: v for k, v in os.environ.items() if k not in READ_FROM_ENV}
    clean.update(VAR_DIR=str(tmp_path), DJANGO_SECRET_KEY_FILE=str(secret),
                 DJANGO_SETTINGS_MODULE="config.settings")
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
         "print(settings.SECRET_KEY)"], cwd=ROOT, env=clean, capture_output=True, text=True,
        timeout=60)
    assert result.stdout.strip() == "from-a-file"
