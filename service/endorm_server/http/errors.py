"""One error shape for every failure: {"error": {"type", "code", "message", "param"}}.

Every layer raises ``endorm_server.errors.RequestError`` (status, code, param); this module only renders
it, and maps what is not a request's fault: ``InternalError`` and anything unexpected are a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from endorm_server.errors import TYPES, InternalError, RequestError

log = logging.getLogger(__name__)


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    type: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    kind = type or TYPES.get(status, "error")
    body = {"error": {"type": kind, "code": code or kind, "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def request_error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": exc.body()}, status_code=exc.status, headers=exc.headers)


def _loc_to_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError, media: str) -> RequestError:
    """pydantic's errors on a body -> the one error (415 when the body was not sent as JSON)."""
    # FastAPI parses a body as JSON only under a JSON content type (none given: not parsed either); any
    # other body fails validation as "not an object", which would blame the JSON: 415 names the cause
    if media != "application/json" and not media.endswith("+json"):
        return RequestError(
            f"content type {media or 'missing'!r}: send application/json", status=415, code="unsupported_media_type"
        )
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    message = "; ".join(f"{_loc_to_param(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}" for e in errors[:5])
    return RequestError(message, _loc_to_param(tuple(first.get("loc", ()))))


def _counted(request: Request, exc: RequestError) -> JSONResponse:
    state = getattr(request.app.state, "service", None)
    if state is not None:
        state.metrics.count_failure(exc)
    return request_error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request(request: Request, exc: RequestError):
        return _counted(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        return _counted(request, validation_error(exc, media))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's "error parsing the body": bytes that are not JSON
            return error_response(422, "request body is not valid JSON (UTF-8)", code="invalid_json")
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(InternalError)
    async def _invariant(request: Request, exc: InternalError):
        log.error("internal invariant failed: %s", exc)
        return _counted(request, RequestError(f"internal error: {exc}", status=500, code="internal_error"))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error")
        return _counted(request, RequestError("internal error", status=500, code="internal_error"))
