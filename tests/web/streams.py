from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync


def read_stream(response: Any) -> str:
    """Drain an async StreamingHttpResponse; the views' database calls come back to this thread."""

    async def collect() -> list[bytes]:
        return [chunk async for chunk in response.streaming_content]

    return b"".join(async_to_sync(collect)()).decode()


def parse_events(body: str) -> list[tuple[str, str]]:
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines.get("event", ""), lines.get("data", "")))
    return events
