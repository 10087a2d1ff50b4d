"""The fault suite, N times per case: real workers, Redis, model and web servers killed or
restarted in the middle of real jobs (tests/faults/cases.py), and the table of what came of it.

    VAR_DIR=/tmp/var_faults nice .venv/bin/python bench/faults.py [--trials 10] \\
        [--cases "worker killed: export,update files out of order"] [--list]

Everything runs on a scratch SQLite database, a Redis and a tiny-model server of its own under
VAR_DIR/faults-bench (wiped first): never on ./run's database or broker. Prints, per case:
trials, jobs lost, jobs done twice, and the status the user saw (each distinct one, with how
many trials ended so). A trial that crashes (could not reach its fault point) counts as lost.
Exits non-zero when anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup(workdir: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings_test"
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'faults.sqlite3'}"
    os.environ.setdefault("MODEL_CACHE_DIR", str(ROOT / "var" / "models"))
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--cases", default="", help="comma-separated case names (default all)")
    parser.add_argument("--list", action="store_true", help="print the case names and stop")
    args = parser.parse_args()

    var_dir = Path(os.environ.get("VAR_DIR", ROOT / "var")).resolve()
    workdir = var_dir / "faults-bench"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.environ["VAR_DIR"] = str(var_dir)
    _setup(workdir)

    import json

    from django.conf import settings

    from launcher.processes import free_port, start_model_server, stop_process, wait_for_http
    from modelsvc.local_models import ensure_tiny_llama
    from retrieval.index_store import reset_loaded_index
    from retrieval.services import ingest_paths
    from tests.conftest import SYNTHETIC_ARTICLES, subprocess_env
    from tests.faults.cases import CASES, Lab, Outcome, Pool, PrivateRedis, celery_on

    if args.list:
        print("\n".join(CASES))
        return 0
    chosen = [name.strip() for name in args.cases.split(",") if name.strip()] or list(CASES)
    unknown = [name for name in chosen if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; --list shows them")

    redis = PrivateRedis(workdir / "redis")
    redis.start()
    folder = ensure_tiny_llama(Path(settings.MODEL_CACHE_DIR))
    port = free_port()
    server_log = open(workdir / "model-server.log", "wb")  # noqa: SIM115 (closed below)
    server = start_model_server(folder, port, log=server_log)
    rows: list[tuple[str, int, int, int, str, float]] = []
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server, 180, "model server")
        settings.MODEL_BASE_URL = f"http://127.0.0.1:{port}/v1"
        settings.MODEL_NAME = settings.MODEL_TOKENIZER = str(folder)
        settings.INDEX_DIR = workdir / "index"
        reset_loaded_index()
        corpus = workdir / "synthetic.jsonl"
        corpus.write_text("".join(json.dumps(a) + "\n" for a in SYNTHETIC_ARTICLES))
        ingest_paths([corpus], fmt="jsonl")
        with celery_on(redis.url):
            for name in chosen:
                lost = duplicated = 0
                statuses: Counter[str] = Counter()
                started = time.monotonic()
                pool = Pool()  # workers and web servers that no trial kills live on
                for trial in range(args.trials):
                    trial_dir = workdir / "cases" / f"{name.split(':')[-1].strip()[:24]}-{trial}"
                    try:
                        with Lab(trial_dir.with_name(trial_dir.name.replace(" ", "-")), redis,
                                 subprocess_env, pool) as lab:
                            outcome = CASES[name](lab)
                            outcome.notes.append("timeline: " + ", ".join(lab.timeline))
                    except Exception as error:  # a trial that crashed counts as lost
                        traceback.print_exc()
                        outcome = Outcome(lost=1, status=f"crashed: {type(error).__name__}")
                    lost += outcome.lost
                    duplicated += outcome.duplicated
                    statuses[outcome.status[:90]] += 1
                    print(f"[{name}] trial {trial + 1}/{args.trials}: lost {outcome.lost}, "
                          f"duplicated {outcome.duplicated}, {outcome.status}; "
                          f"{'; '.join(outcome.notes)}", flush=True)
                pool.close()
                status = "; ".join(f"{text} (x{count})" if len(statuses) > 1 else text
                                   for text, count in statuses.most_common())
                rows.append((name, args.trials, lost, duplicated, status,
                             time.monotonic() - started))
    finally:
        stop_process(server)
        server_log.close()
        redis.stop()

    print()
    print("| case | trials | lost | duplicated | user-visible status | wall s |")
    print("|---|---:|---:|---:|---|---:|")
    for name, trials, lost, duplicated, status, wall in rows:
        print(f"| {name} | {trials} | {lost} | {duplicated} | {status} | {wall:.0f} |")
    return 1 if any(row[2] or row[3] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
