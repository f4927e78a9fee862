"""The one error a request (or one item of it) fails with, and the one the server itself fails with.

``RequestError`` carries everything an answer needs: the HTTP status, a stable machine-readable
``code``, a message for people and the ``param`` it names (``items.3.response``). Every layer raises
it (inputs, scoring, admission, routes), so the HTTP front has one handler and a per-item outcome
(``"item_errors": "report"``) is the same object the whole request would have failed with.

``InternalError`` is an invariant of ours that broke (malformed engine output): a 500, never retried.
"""

from __future__ import annotations

# HTTP status -> the error shape's ``type`` (the family); ``code`` says exactly why.
TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    499: "client_closed_request",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}

# The codes a 4xx/5xx can carry (metrics create a series for each at 0).
CODES = (
    "invalid_input",
    "invalid_json",
    "sequence_too_long",
    "token_out_of_vocabulary",
    "template_error",
    "steps_required",
    "too_many_items",
    "model_not_found",
    "unsupported_media_type",
    "idempotency_key_reused",
    "invalid_idempotency_key",
    "unauthorized",
    "body_too_large",
    "body_timeout",
    "overloaded",
    "draining",
    "not_ready",
    "engine_unavailable",
    "deadline_exceeded",
    "client_disconnected",
    "internal_error",
)


class RequestError(ValueError):
    """A request (or one of its items) cannot be answered as asked; ``param`` names the field."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 422,
        code: str = "invalid_input",
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code
        self.type = type or TYPES.get(status, "error")
        self.headers = headers or {}

    def at(self, prefix: str) -> RequestError:
        """The same error, its ``param`` placed under ``prefix`` (``items.3`` + ``response``)."""
        self.param = f"{prefix}.{self.param}" if self.param else prefix
        return self

    def body(self) -> dict[str, str | None]:
        return {"type": self.type, "code": self.code, "message": self.message, "param": self.param}

    def __repr__(self) -> str:
        return f"RequestError({self.message!r}, param={self.param!r}, status={self.status}, code={self.code!r})"


class InternalError(RuntimeError):
    """An invariant of the server broke (not the caller's input): HTTP 500, not retried."""
