"""Rewrite .env.example and the README settings table from the settings actually read.

Run after adding a setting: `.venv/bin/python scripts/document_settings.py`. The test
tests/test_settings.py fails while any setting is undocumented.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
os.environ.setdefault("VAR_DIR", tempfile.mkdtemp())
for name in list(os.environ):
    if name in {"DATABASE_URL", "REDIS_URL", "MODEL_BASE_URL", "MODEL_NAME"}:
        del os.environ[name]

import django  # noqa: E402

django.setup()
from config.env import READ_FROM_ENV  # noqa: E402

START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def main() -> None:
    rows = ["| variable | what it does |", "|---|---|"]
    rows += [f"| `{name}` | {help_text} |" for name, help_text in READ_FROM_ENV.items()]
    readme = (ROOT / "README.md").read_text()
    block = f"{START}\n" + "\n".join(rows) + f"\n{END}"
    readme = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, readme,
                    flags=re.S)
    (ROOT / "README.md").write_text(readme)
    lines = ["# Every setting the app reads from the environment. Copy to .env (./run loads it)",
             "# and uncomment what you change. Unset values take the defaults described in",
             "# README.md (embedded set-up: SQLite, bundled Redis, local model server).",
             "# NAME_FILE=path reads a secret from a file instead of NAME.", ""]
    for name, help_text in READ_FROM_ENV.items():
        lines += [f"# {help_text}", f"# {name}=", ""]
    (ROOT / ".env.example").write_text("\n".join(lines))
    print(f"documented {len(READ_FROM_ENV)} settings")


if __name__ == "__main__":
    main()
