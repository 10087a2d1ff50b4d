"""Time to first token, as a client sees it: prints figures, asserts nothing.

    VAR_DIR=... nice .venv/bin/python bench/first_token.py --host http://127.0.0.1:8000 \
        [--questions 5] [--user firsttoken-bench]
    VAR_DIR=... LOCAL_MODEL=tiny WEB_PORT=8421 LOCAL_MODEL_PORT=8431 EMBEDDED_REDIS_PORT=6422 \
        .venv/bin/python bench/first_token.py --start [--questions 5]

With --host, the product must already run (`./run`) with *the same environment* (VAR_DIR or
DATABASE_URL): the bench creates one clinician account with an API token in that database
(`firsttoken-bench`, no password). With --start it starts `python -m launcher.run` itself with
this environment (TRAIN_ON_FIRST_RUN and BACKGROUND_CORPUS default to off), waits until it
prints that it is ready, measures, and stops it.

Each question (PubMedQA questions, asked one at a time, none cached: a fresh consultation each)
is POSTed to /api/v1/consultations; the client then follows /api/v1/consultations/ID/stream.
Reported, from the moment the POST left the client:
- passages: the `passages` event (retrieval done, the evidence list shown);
- first token: the `first_token` event (the model's first token reached the server; its text
  stays there until its sentence is checked);
- first sentence: the first `sentence` event, the first text the clinician reads;
- final: the `final` snapshot.
Then the answer's stage timings as the pipeline stored them (Consultation.stage_timings:
embed, route, retrieve, fit, prompt before generation) and the model's own time to first token.
The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EVENTS = ("passages", "first_token", "sentence", "final")
PRE_GENERATION = ("embed_ms", "route_ms", "retrieve_ms", "fit_ms", "prompt_ms")


def api_token(username: str) -> str:
    """A clinician with an API token in the server's database (created once, no password)."""
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from rest_framework.authtoken.models import Token

    from clinic.roles import CLINICIAN

    user, created = User.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    user.groups.add(Group.objects.get(name=CLINICIAN))
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)


def stored_timings(consultation_id: int) -> tuple[dict[str, Any], int | None]:
    from clinic.models import Consultation

    row = Consultation.objects.get(pk=consultation_id)
    return dict(row.stage_timings or {}), row.time_to_first_token_ms


def ask(host: str, token: str, question: str, timeout: float) -> dict[str, Any]:
    """Post one question and follow its stream: seconds from the POST to each event."""
    auth = {"Authorization": f"Token {token}", "content-type": "application/json"}
    started = time.perf_counter()
    request = urllib.request.Request(f"{host}/api/v1/consultations", headers=auth,
                                     data=json.dumps({"question": question}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        consultation_id = json.loads(response.read())["id"]
    seen: dict[str, Any] = {"id": consultation_id, "post": time.perf_counter() - started}
    stream = urllib.request.Request(f"{host}/api/v1/consultations/{consultation_id}/stream",
                                    headers={"Authorization": f"Token {token}"})
    event = ""
    with urllib.request.urlopen(stream, timeout=timeout) as response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in EVENTS and event not in seen:
                seen[event] = time.perf_counter() - started
                if event == "final":
                    seen["status"] = json.loads(line[5:]).get("status")
                    break
    return seen


def start_stack(port: int) -> subprocess.Popen[bytes]:
    env = {"TRAIN_ON_FIRST_RUN": "false", "BACKGROUND_CORPUS": "none", **os.environ,
           "WEB_PORT": str(port)}
    var_dir = Path(os.environ.get("VAR_DIR", ROOT / "var"))
    var_dir.mkdir(parents=True, exist_ok=True)
    log = open(var_dir / "first_token_stack.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "launcher.run"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 900
    for raw in process.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line.startswith("["):  # status lines only: the demo accounts' passwords stay out
            print(f"   | {line}", flush=True)
        if "] open http" in line or "] the site is up at" in line:  # launcher.run's last
            # Keep reading what it prints, so that a full pipe never blocks it.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process
        if time.monotonic() > deadline:
            break
    stop_stack(process)
    sys.exit(f"the stack did not become ready; see {log.name}")


def stop_stack(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGINT)  # launcher.run stops its children on SIGINT
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"median {np.median(values):8.0f} ms   min {min(values):8.0f}   "
            f"max {max(values):8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None)
    parser.add_argument("--start", action="store_true",
                        help="start `python -m launcher.run` with this environment first")
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--offset", type=int, default=0, help="skip this many questions")
    parser.add_argument("--user", default="firsttoken-bench")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per answer")
    parser.add_argument("--data", type=Path,
                        default=ROOT.parent / "shared" / "data" / "pubmedqa" / "pqal_dev.json")
    args = parser.parse_args()
    if not args.host and not args.start:
        parser.error("give --host URL of a running server, or --start")

    stack = None
    if args.start:
        port = int(os.environ.get("WEB_PORT", "8000"))
        stack = start_stack(port)
        args.host = f"http://127.0.0.1:{port}"
    try:
        token = api_token(args.user)
        questions = [item["QUESTION"] for item in
                     json.loads(args.data.read_text()).values()][args.offset:]
        questions = questions[:args.questions]
        print(f"{len(questions)} questions to {args.host}, one at a time; load average "
              f"{os.getloadavg()}", flush=True)
        rows = []
        for number, question in enumerate(questions, start=1):
            seen = ask(args.host, token, question, args.timeout)
            timings, model_ttft = stored_timings(seen["id"])
            seen.update(timings=timings, model_ttft=model_ttft)
            rows.append(seen)
            stages = ", ".join(f"{name[:-3]} {timings[name]:.0f}" for name in PRE_GENERATION
                               if name in timings)
            print(f"{number:3d}. {seen.get('status')}: passages "
                  f"{1000 * seen.get('passages', float('nan')):.0f} ms, first token "
                  f"{1000 * seen.get('first_token', float('nan')):.0f} ms, first sentence "
                  f"{1000 * seen.get('sentence', float('nan')):.0f} ms, final "
                  f"{1000 * seen.get('final', float('nan')):.0f} ms | before generation "
                  f"(ms): {stages} | model TTFT {model_ttft} ms", flush=True)
        print(f"\nquestion posted -> event, {len(rows)} answers; load average "
              f"{os.getloadavg()}")
        for name in ("post", *EVENTS):
            print(f"   {name:<12} {ms([1000 * r[name] for r in rows if name in r])}")
        print("stages before generation, as stored per answer (Consultation.stage_timings):")
        for name in PRE_GENERATION:
            print(f"   {name:<12} {ms([r['timings'][name] for r in rows if name in r['timings']])}")
        print(f"   model TTFT   {ms([r['model_ttft'] for r in rows if r['model_ttft']])}")
    except urllib.error.URLError as error:
        sys.exit(f"cannot reach {args.host}: {error}")
    finally:
        if stack is not None:
            stop_stack(stack)


if __name__ == "__main__":
    main()
