"""Exceptions. Every HTTP error of the server carries ``{"error": {"type", "message", "param"}}``;
it becomes an :class:`APIStatusError` subclass chosen by status code."""

from __future__ import annotations

import re
from typing import Any


class EndoRMError(Exception):
    """Base class of every error raised by the client."""


class APIConnectionError(EndoRMError):
    """No answer: every attempt failed to connect (or the connection broke)."""

    def __init__(self, message: str, *, request_id: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.url = url


class APITimeoutError(APIConnectionError):
    """The server did not answer within the read timeout."""


class APIStatusError(EndoRMError):
    """The server answered with an error status."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
        url: str | None = None,
    ) -> None:
        super().__init__(f"{status_code} {type or 'error'}: {message}" + (f" (param: {param})" if param else ""))
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body
        self.url = url


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404 (e.g. ``model`` names a model the server does not serve)."""


class PayloadTooLargeError(APIStatusError):
    """413: body over the server's byte limit (type ``payload_too_large``), more items than
    ``max_items_per_request`` (``too_many_items``; :attr:`limit` holds the limit), or one
    sequence over ``max_model_len`` (``sequence_too_long``)."""

    @property
    def limit(self) -> int | None:
        if self.type != "too_many_items":
            return None
        m = re.search(r"limit of (\d+)", self.message or "")
        return int(m.group(1)) if m else None


class InvalidRequestError(APIStatusError):
    """422: invalid input; ``param`` names the field."""


class RateLimitError(APIStatusError):
    """429: the server is overloaded (retried by the client, honouring Retry-After)."""


class InternalServerError(APIStatusError):
    """500 and other 5xx without a dedicated class."""


class ServiceUnavailableError(APIStatusError):
    """503: loading, draining or engine down (retried, preferring another replica)."""


class DeadlineExceededError(APIStatusError):
    """504: the request ran past the server's deadline."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: DeadlineExceededError,
}


def error_class(status: int) -> type[APIStatusError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InternalServerError if status >= 500 else APIStatusError
