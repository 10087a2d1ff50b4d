"""Benchmark the model client: overhead vs the raw `openai` client, TTFT, tokens/s, concurrency.

    .venv/bin/python bench/modelsvc.py                       # starts the tiny model on CPU
    .venv/bin/python bench/modelsvc.py --model-folder /tmp/mc/smollm2-135m-instruct
    .venv/bin/python bench/modelsvc.py --base-url http://gpu:8000/v1 --model NAME

Prints figures; asserts nothing (tests live in tests/modelsvc).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

MESSAGES = [{"role": "system", "content": "You are a concise clinical assistant."},
            {"role": "user", "content": "Summarise the evidence on aspirin for primary "
                                        "prevention of cardiovascular disease."}]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def p95_ms(samples: list[float]) -> float:
    return sorted(samples)[max(int(len(samples) * 0.95) - 1, 0)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="")
    parser.add_argument("--model", default="")
    parser.add_argument("--model-folder", default=os.environ.get(
        "BENCH_MODEL_FOLDER", str(Path(os.environ.get("MODEL_CACHE_DIR", "/tmp/mc"))
                                  / "tiny-llama-test")))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--stream-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    import django

    django.setup()
    import openai

    from launcher.processes import free_port, start_model_server, stop_process, wait_for_http
    from modelsvc.client import ClientConfig, ModelClient, StreamDone, TextDelta

    process = None
    base_url, model = args.base_url, args.model or args.model_folder
    if not base_url:
        port = free_port()
        log = open(Path(tempfile.gettempdir()) / f"bench-model-{port}.log", "wb")  # noqa: SIM115
        process = start_model_server(Path(args.model_folder), port, log=log, device=args.device)
        wait_for_http(f"http://127.0.0.1:{port}/health", process, 180, "model server")
        base_url = f"http://127.0.0.1:{port}/v1"
    try:
        ours = ModelClient(ClientConfig(base_url=base_url, read_timeout=120))
        raw = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
        print(f"server {base_url}, model {model}")

        def ours_one() -> None:
            ours.chat(MESSAGES, model=model, max_tokens=1)

        def raw_one() -> None:
            raw.chat.completions.create(model=model, messages=MESSAGES,  # type: ignore[arg-type]
                                        max_tokens=1, temperature=0.0)

        def ours_stream() -> tuple[float, int, float]:
            started = time.perf_counter()
            first = None
            for event in ours.stream_chat(MESSAGES, model=model, max_tokens=args.stream_tokens):
                if isinstance(event, TextDelta) and first is None:
                    first = time.perf_counter() - started
                if isinstance(event, StreamDone):
                    tokens = event.result.completion_tokens
            return first or 0.0, tokens, time.perf_counter() - started

        def raw_stream() -> tuple[float, int, float]:
            started = time.perf_counter()
            first = None
            tokens = 0
            stream = raw.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=args.stream_tokens,  # type: ignore
                temperature=0.0, stream=True, stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - started
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            return first or 0.0, tokens, time.perf_counter() - started

        for warm in (ours_one, raw_one, ours_one, raw_one):
            warm()
        timings: dict[str, list[float]] = {"ours": [], "openai": []}
        for _ in range(args.requests):  # interleaved, so server drift hits both alike
            for name, call in (("ours", ours_one), ("openai", raw_one)):
                started = time.perf_counter()
                call()
                timings[name].append(time.perf_counter() - started)
        print(f"\none-token request, {args.requests} each, interleaved:")
        for name, samples in timings.items():
            print(f"  {name:7s} median {median_ms(samples):7.2f} ms   "
                  f"p95 {p95_ms(samples):7.2f} ms")
        print(f"  overhead of our client vs openai (median): "
              f"{median_ms(timings['ours']) - median_ms(timings['openai']):+.2f} ms")

        streams: dict[str, list[tuple[float, int, float]]] = {"ours": [], "openai": []}
        runs: dict[str, Callable[[], tuple[float, int, float]]] = {"ours": ours_stream,
                                                                   "openai": raw_stream}
        for _ in range(max(args.requests // 4, 3)):
            for name, run in runs.items():
                streams[name].append(run())
        print(f"\nstreams of {args.stream_tokens} tokens:")
        for name, rows in streams.items():
            ttft = [r[0] for r in rows]
            rate = [r[1] / r[2] for r in rows if r[2] > 0]
            print(f"  {name:7s} TTFT median {median_ms(ttft):7.2f} ms   "
                  f"tokens/s median {statistics.median(rate):7.1f}")

        print(f"\n{args.concurrency} concurrent streams through our client:")
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            rows = list(pool.map(lambda _: ours_stream(), range(args.concurrency)))
        wall = time.perf_counter() - started
        total_tokens = sum(r[1] for r in rows)
        print(f"  wall {wall:.2f} s, {total_tokens} tokens, aggregate {total_tokens / wall:.1f} "
              f"tokens/s, TTFT median {median_ms([r[0] for r in rows]):.0f} ms, "
              f"max {max(r[0] for r in rows) * 1000:.0f} ms")
    finally:
        if process is not None:
            stop_process(process)


if __name__ == "__main__":
    main()
