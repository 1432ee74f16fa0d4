"""Exceptions the engine raises; the API layer maps each to one OpenAI error envelope."""

from __future__ import annotations


class EngineError(Exception):
    """Base class. `code` is OpenAI's machine-readable code (a string) or None."""

    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(EngineError):
    """The request cannot be served as given (maps to 400)."""


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class InvalidConstraintError(InvalidRequestError):
    """A response_format schema or grammar that cannot be compiled."""

    code = "invalid_response_format"


class ServerBusyError(EngineError):
    """The queue is full (maps to 429 with Retry-After)."""

    code = "server_busy"

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class ModelNotFoundError(EngineError):
    code = "model_not_found"


class ShuttingDownError(EngineError):
    """The server is stopping and accepts no new work (maps to 503)."""

    code = "shutting_down"
