"""The embedded model server under a clinician's first-hour load: prints figures, asserts nothing.

Starts `transformers serve` with the bundled SmolLM2-135M-Instruct as ./run does (continuous
batching unless --no-continuous-batching), then through the app's own client (per-token
timeouts, repetition and length guards):

1. asks N questions (default 10) spread over one minute, each with the answer prompt and five
   numbered passages as the quick answer sends them, all streaming at once, and reports how each
   ended (stop / length / repetition guard / failed), time to first token and total time;
2. then, alone, the three model calls of a deep consult one after another (plan, draft,
   revise), which is the model's share of a deep consult's time.

    VAR_DIR=/tmp/bench HF_HUB_OFFLINE=1 MODEL_CACHE_DIR=var/models \\
        .venv/bin/python bench/embedded_load.py [--questions 10] [--spread 60] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from bench.questions import QUESTIONS  # noqa: E402
from clinic.answering import build_messages  # noqa: E402
from clinic.deep import PLAN_MAX_TOKENS, REVISE_INSTRUCTION, plan_messages  # noqa: E402
from launcher.processes import (  # noqa: E402
    free_port,
    start_model_server,
    stop_process,
    wait_for_http,
)
from modelsvc.client import ClientConfig, ModelClient, StreamDone  # noqa: E402
from modelsvc.errors import ModelServiceError  # noqa: E402
from modelsvc.local_models import ensure_smollm2  # noqa: E402
from modelsvc.prompts import PromptPassage  # noqa: E402

PASSAGES = [
    PromptPassage(1, "90000001", "Low-dose aspirin for secondary prevention of ischemic stroke",
                  "Aspirin 75-150 mg daily reduced recurrent ischemic stroke by 22% and "
                  "increased major bleeding modestly in pooled randomised trials."),
    PromptPassage(2, "90000002", "Metformin use in chronic kidney disease stage 3",
                  "Lactic acidosis was rare and not increased with metformin at reduced doses "
                  "when eGFR stayed above 30."),
    PromptPassage(3, "90000003", "Vitamin D supplementation and fracture risk in older adults",
                  "Vitamin D alone did not reduce hip or non-vertebral fractures in adults over "
                  "65 in a randomised trial of 25,000 participants."),
    PromptPassage(4, "90000004", "Statins and muscle symptoms: a blinded crossover trial",
                  "Most muscle symptoms reported on statins also occurred on placebo."),
    PromptPassage(5, "90000006", "Early mobilisation after hip fracture surgery",
                  "Mobilisation within 24 hours shortened hospital stay and improved function "
                  "at 30 days without more complications."),
]


def ask(client: ModelClient, model: str, messages: list[dict[str, Any]],
        max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        for event in client.stream_chat(messages, model=model, max_tokens=max_tokens):
            if isinstance(event, StreamDone):
                result = event.result
                return {"ended": result.finish_reason or "?",
                        "ttft_s": (result.time_to_first_token_ms or 0) / 1000,
                        "total_s": result.total_ms / 1000, "tokens": result.completion_tokens}
    except ModelServiceError as error:
        return {"ended": f"FAILED: {error.message}", "ttft_s": None,
                "total_s": time.perf_counter() - started, "tokens": 0}
    return {"ended": "FAILED: no result", "ttft_s": None, "total_s": 0, "tokens": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--spread", type=float, default=60.0,
                        help="seconds over which the questions are asked")
    parser.add_argument("--max-tokens", type=int, default=settings.ANSWER_MAX_TOKENS)
    parser.add_argument("--no-continuous-batching", action="store_true")
    parser.add_argument("--skip-deep", action="store_true")
    args = parser.parse_args()

    folder = ensure_smollm2(Path(settings.MODEL_CACHE_DIR))
    port = free_port()
    log_path = Path(settings.VAR_DIR) / "bench-model-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        server = start_model_server(folder, port, log=log,
                                    continuous_batching=not args.no_continuous_batching,
                                    kv_blocks=settings.LOCAL_MODEL_KV_BLOCKS)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", server, 300, "model server")
            config = ClientConfig.from_settings()
            client = ModelClient(ClientConfig(
                base_url=f"http://127.0.0.1:{port}/v1", connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout, first_token_timeout=config.first_token_timeout,
                token_gap_timeout=config.token_gap_timeout,
                repetition_window=config.repetition_window, max_retries=config.max_retries))
            model = str(folder)
            ask(client, model, [{"role": "user", "content": "Say OK."}], 2)  # warm-up
            print(f"continuous batching: {not args.no_continuous_batching}; cores: "
                  f"{os.cpu_count()}; load average at start: {os.getloadavg()[0]:.1f}; "
                  f"max tokens {args.max_tokens}; first-token timeout "
                  f"{config.first_token_timeout:g} s, gap timeout {config.token_gap_timeout:g} s")
            results: list[dict[str, Any]] = [{} for _ in range(args.questions)]

            def one(index: int) -> None:
                question = QUESTIONS[index % len(QUESTIONS)]
                results[index] = ask(client, model, build_messages(question, PASSAGES),
                                     args.max_tokens)

            threads = []
            started = time.perf_counter()
            for index in range(args.questions):
                thread = threading.Thread(target=one, args=(index,))
                thread.start()
                threads.append(thread)
                time.sleep(args.spread / max(args.questions, 1))
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            print(f"\n{args.questions} questions asked over {args.spread:g} s, all done after "
                  f"{wall:.0f} s")
            for index, result in enumerate(results):
                ttft = f"{result['ttft_s']:.1f}" if result["ttft_s"] is not None else "-"
                print(f"  q{index + 1:02d}: {result['ended']:<12} first token {ttft:>6} s, "
                      f"total {result['total_s']:6.1f} s, {result['tokens']} tokens")
            failed = sum(1 for r in results if str(r["ended"]).startswith("FAILED"))
            print(f"  failed: {failed} of {args.questions}")

            if not args.skip_deep:
                question = QUESTIONS[0]
                draft_messages = build_messages(question, PASSAGES)
                timings = []
                deep_started = time.perf_counter()
                plan = ask(client, model, plan_messages(question), PLAN_MAX_TOKENS)
                timings.append(("plan", plan))
                draft = ask(client, model, draft_messages, args.max_tokens)
                timings.append(("draft", draft))
                revise_messages = [*draft_messages,
                                   {"role": "assistant", "content": "Aspirin helps [1]."},
                                   {"role": "user", "content": REVISE_INSTRUCTION}]
                timings.append(("revise", ask(client, model, revise_messages,
                                              args.max_tokens)))
                print(f"\ndeep consult model calls, alone: "
                      f"{time.perf_counter() - deep_started:.0f} s in all")
                for name, result in timings:
                    print(f"  {name:<7} {result['ended']:<12} total {result['total_s']:6.1f} s, "
                          f"{result['tokens']} tokens")
            print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
        finally:
            stop_process(server)


if __name__ == "__main__":
    main()
