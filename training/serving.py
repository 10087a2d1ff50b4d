"""How the embedded model server finds an adapter by its served name.

`transformers serve` loads whatever the request's `model` names, and a name that is an existing
path is loaded from disk. The launcher starts it inside TRAINING_SERVED_DIR, where each trained
adapter has a link named after its served name pointing at its merged weights: the router's
`model` value reaches the adapter with nothing else to configure. vLLM serves the same adapter
from its adapter folder (`manage.py vllm_command` prints `--lora-modules name=path`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.conf import settings

_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def served_dir() -> Path:
    folder = Path(settings.TRAINING_SERVED_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def link_served_name(served_name: str, merged_dir: Path) -> Path:
    """served_dir()/served_name -> merged_dir, replaced atomically when it exists."""
    if not _SAFE_NAME.match(served_name):
        raise ValueError(f"{served_name!r} cannot be a served name: lower-case letters, digits, "
                         "dots, dashes and underscores only.")
    link = served_dir() / served_name
    temporary = link.with_name(f".{served_name}.{os.getpid()}")
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    temporary.symlink_to(Path(merged_dir).resolve(), target_is_directory=True)
    os.replace(temporary, link)
    return link


def served_folder(served_name: str) -> Path | None:
    """The merged weights the embedded server loads for served_name, if linked."""
    link = Path(settings.TRAINING_SERVED_DIR) / served_name
    return link.resolve() if link.exists() else None
