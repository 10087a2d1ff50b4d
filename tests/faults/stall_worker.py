"""A real Celery worker that stops dead at one point of a job, so a test can SIGKILL it there.

    python -m tests.faults.stall_worker <celery worker arguments>

FAULT_STALL names the point, `package.module:Qualified.name` (a function or a method), and
FAULT_STALL_AT which call of it (1 = the first). When the job reaches that call the worker
writes FAULT_STALL_FLAG and then waits, doing nothing, until it is killed: everything before
that point has happened for real (claims, heartbeats, stored rows), nothing after it has. The
kill itself is the test's: SIGKILL to the worker's process group, no cleanup of any kind.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any


def _install_stall(target: str, at: int, flag: Path) -> None:
    module_name, _, qualname = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = qualname.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def stalling(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == at:
            flag.write_text(f"{os.getpid()}\n")
            while True:  # until SIGKILL
                time.sleep(60)
        return original(*args, **kwargs)

    setattr(owner, name, stalling)


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    target = os.environ.get("FAULT_STALL", "")
    if target:
        _install_stall(target, int(os.environ.get("FAULT_STALL_AT", "1")),
                       Path(os.environ["FAULT_STALL_FLAG"]))
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
