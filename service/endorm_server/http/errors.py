"""One error shape for every failure: {"error": {"type", "message", "param"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from endorm_server.engine import EngineError
from endorm_server.http.admission import Draining, Overloaded
from endorm_server.inputs.tokenization import InputError
from endorm_server.scoring.rewards import RewardInputError
from endorm_server.scoring.scorer import SequenceTooLongError

log = logging.getLogger(__name__)

_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
    504: "timeout",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or _TYPES.get(status, "error")
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    type: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"type": type or _TYPES.get(status, "error"), "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def _loc_to_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    retry = {"Retry-After": str(retry_after_s)}

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError):
        return error_response(exc.status, exc.message, param=exc.param, type=exc.type, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        # FastAPI parses a body as JSON only under a JSON content type (none given: not parsed either); any
        # other body fails validation as "not an object", which would blame the JSON: 415 names the cause
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            return error_response(
                415, f"content type {media or 'missing'!r}: send application/json", type="unsupported_media_type"
            )
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _loc_to_param(tuple(first.get("loc", ())))
        message = "; ".join(f"{_loc_to_param(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}" for e in errors[:5])
        return error_response(422, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's "error parsing the body": bytes that are not JSON
            return error_response(422, "request body is not valid JSON (UTF-8)", type="invalid_json")
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(SequenceTooLongError)
    async def _too_long(_: Request, exc: SequenceTooLongError):
        return error_response(413, str(exc), param=exc.param, type="sequence_too_long")

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError):
        return error_response(422, str(exc), param=exc.param)

    @app.exception_handler(RewardInputError)
    async def _reward(_: Request, exc: RewardInputError):
        if exc.param is None:  # the engine's output was malformed: our fault, not the caller's
            log.error("malformed engine output: %s", exc)
            return error_response(500, "internal error: malformed engine output", type="internal_error")
        return error_response(422, str(exc), param=exc.param)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded):
        return error_response(429, str(exc), headers=retry)

    @app.exception_handler(Draining)
    async def _draining(_: Request, exc: Draining):
        return error_response(503, "server is shutting down; retry on another replica", type="draining", headers=retry)

    @app.exception_handler(EngineError)
    async def _engine(_: Request, exc: EngineError):
        return error_response(503, f"engine unavailable: {exc}", type="engine_unavailable", headers=retry)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error", type="internal_error")
