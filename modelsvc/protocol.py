"""The OpenAI chat-completions wire format, as spoken by `transformers serve` and `vllm serve`.

Only the fields we send or read are modelled; everything else the servers add is ignored, so a
server upgrade that adds fields never breaks parsing. No logic lives here.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(_Wire):
    include_usage: bool = True


class ChatCompletionRequest(BaseModel):
    # vLLM extras (guided_json) travel as extra fields; transformers serve ignores them.
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage]
    max_tokens: int = Field(ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class Usage(_Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None


class ResponseMessage(_Wire):
    role: str | None = None
    content: str | None = None


class Choice(_Wire):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = None


class ChatCompletionResponse(_Wire):
    id: str | None = None
    model: str | None = None
    choices: list[Choice]
    usage: Usage | None = None


class Delta(_Wire):
    role: str | None = None
    content: str | None = None


class ChunkChoice(_Wire):
    index: int = 0
    delta: Delta = Field(default_factory=Delta)
    finish_reason: str | None = None


class ChatCompletionChunk(_Wire):
    """One `data:` line of a stream; vLLM sends usage in a last chunk with no choices,
    transformers serve puts it on the chunk that carries the finish_reason."""

    id: str | None = None
    model: str | None = None
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None


def error_text(body: bytes | str) -> str:
    """The server's own error sentence from any of the shapes in use.

    vLLM: {"error": {"message": ...}} or {"object": "error", "message": ...};
    transformers serve / FastAPI: {"detail": ...}; anything else: the raw text, shortened.
    """
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw.strip()[:500]
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
        for key in ("message", "detail"):
            if parsed.get(key):
                return str(parsed[key])[:500]
    return raw.strip()[:500]
