"""A real local HTTP server that plays an OpenAI-compatible model server badly on purpose.

Each request takes the next scripted Reply (the last one repeats). It records every request
body and whether a client hung up in the middle of a stream.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON
    stream: list[str] | None = None  # texts sent as chunks
    chunk_delay: float = 0.0
    first_delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] | None = (11, 0)  # completion tokens filled from the stream


def completion(text: str, *, model: str = "double", prompt_tokens: int = 11,
               completion_tokens: int = 3) -> dict[str, Any]:
    return {"id": "x", "model": model, "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class ModelServerDouble:
    def __init__(self, replies: list[Reply], health_status: int = 200,
                 health_delay: float = 0.0) -> None:
        self.replies = list(replies)
        self.health_status = health_status
        self.health_delay = health_delay
        self.requests: list[dict[str, Any]] = []
        self.client_hung_up = threading.Event()
        self.chunks_sent = 0
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/health":
                    time.sleep(double.health_delay)
                    self._json(double.health_status, {"status": "ok"})
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                double.requests.append(body)
                index = min(len(double.requests), len(double.replies)) - 1
                reply = double.replies[index]
                time.sleep(reply.first_delay)
                if reply.stream is None or reply.status != 200:
                    self._json(reply.status, reply.body or completion("ok"), reply.headers)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    for text in reply.stream:
                        self._event({"model": "double", "choices": [
                            {"index": 0, "delta": {"content": text}}]})
                        double.chunks_sent += 1
                        time.sleep(reply.chunk_delay)
                    final: dict[str, Any] = {"model": "double", "choices": [
                        {"index": 0, "delta": {}, "finish_reason": "stop"}]}
                    if reply.usage:
                        final["usage"] = {"prompt_tokens": reply.usage[0],
                                          "completion_tokens": len(reply.stream)}
                    self._event(final)
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    double.client_hung_up.set()

            def _event(self, payload: dict[str, Any]) -> None:
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

            def _json(self, status: int, payload: Any,
                      headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    double.client_hung_up.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ModelServerDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(*replies: Reply, **options: Any) -> Iterator[ModelServerDouble]:
    with ModelServerDouble(list(replies), **options) as double:
        yield double
