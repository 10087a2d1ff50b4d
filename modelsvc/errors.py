"""The one error shape of the model service: callers never see httpx, openai or pydantic errors.

`message` is one sentence for a person (what is wrong, what to do); `detail` is for the log.
`permanent` says whether trying the same request again can help; `retryable` says whether the
client itself retries it (only connection errors, 429 and 5xx are).
"""

from __future__ import annotations


class ModelServiceError(Exception):
    permanent: bool = False
    retryable: bool = False
    retry_after: float | None = None

    def __init__(self, message: str, *, permanent: bool | None = None, detail: str = "",
                 status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if permanent is not None:
            self.permanent = permanent
        self.detail = detail
        self.status_code = status_code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(message={self.message!r}, permanent={self.permanent}, "
                f"status_code={self.status_code}, detail={self.detail[:200]!r})")


class ModelUnavailableError(ModelServiceError):
    """The server could not be reached or answered 5xx: worth retrying later."""

    retryable = True


class ModelRateLimitedError(ModelUnavailableError):
    """The server answered 429."""


class ModelTimeoutError(ModelServiceError):
    """The server accepted the request but a response or a streamed chunk came too late.

    Not retried by the client: a server too slow to answer is not helped by more load.
    """


class ModelRequestError(ModelServiceError):
    """The server rejected the request itself (4xx): sending it again gives the same answer."""

    permanent = True


class ContextLengthError(ModelRequestError):
    """The prompt plus the requested completion exceed the model's context window."""


class ModelProtocolError(ModelServiceError):
    """The server answered something that is not the OpenAI chat-completions protocol."""

    permanent = True


class PromptTooLongError(ModelServiceError):
    """The question (with its patient note) does not fit the model's context on its own."""

    permanent = True
