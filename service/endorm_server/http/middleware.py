"""ASGI middleware: request id + JSON access log + metrics, the body-size limit and the body deadline.

Pure ASGI (no BaseHTTPMiddleware) so that client disconnects still reach the
route and the body limit is enforced while the body streams in, before any
JSON parsing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from endorm_server.core.admission import Draining
from endorm_server.http.errors import error_response, request_error_response
from endorm_server.http.metrics import Metrics

access_log = logging.getLogger("endorm.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


async def _run_until_answered(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, answered: Callable[[], bool]
) -> None:
    """Run ``app``; once the middleware has answered the request itself (``answered()``), the app's sends
    are dropped and its errors swallowed: it is only finishing after the disconnect it was handed."""

    async def guarded_send(message: Message) -> None:
        if not answered():
            await send(message)

    try:
        await app(scope, receive, guarded_send)
    except Exception:
        if not answered():
            raise


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: by Content-Length at once, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, f"request body over {self.max_bytes} bytes", code="body_too_large")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await error_response(400, "bad Content-Length", code="invalid_input")(scope, receive, send)
                if declared > self.max_bytes:
                    return await too_large(scope, receive, send)

        seen = 0
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Answer 413 now; the app sees a disconnect and stops reading.
                    exceeded = True
                    await too_large(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        await _run_until_answered(self.app, scope, limited_receive, send, lambda: exceeded)


class BodyTimeoutMiddleware:
    """408 when a request body has not arrived whole ``timeout_s`` after the headers.

    uvicorn bounds idle keep-alive connections but not a body that trickles in or stops half way
    (slowloris): without this, each such client holds a connection and a task for as long as it likes.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False
        timed_out = False

        async def bounded_receive() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:  # after the body only a disconnect can come: no deadline on waiting for it
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                message_text = f"request body not received within {self.timeout_s:g} s"
                await error_response(408, message_text, code="body_timeout", headers={"Connection": "close"})(
                    scope, receive, send
                )
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await _run_until_answered(self.app, scope, bounded_receive, send, lambda: timed_out)


class AccessMiddleware:
    """X-Request-ID (accepted or made), one JSON log line and metrics per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        scope["state"]["arrived_at"] = time.monotonic()
        service = scope["app"].state.service
        counted = scope.get("method") == "POST"
        service.http_in_flight += counted
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            service.http_in_flight -= counted
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(elapsed)
            state = scope.get("state", {})
            access_log.info(
                json.dumps(
                    {
                        "event": "request",
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "duration_s": round(elapsed, 6),
                        "items": state.get("items"),
                        "tokens": state.get("tokens"),
                        "client": (scope.get("client") or [None])[0],
                    }
                )
            )


class DrainCutoffMiddleware:
    """503 + Retry-After, not uvicorn's 500, for a request still running when the drain budget ends.

    uvicorn then cancels the request's task and answers 500 to whatever has not started its response;
    the request was never wrong, the replica is going away, so it is answered like one that arrived during
    the drain (``Draining``): retry on another replica. Only while draining, and only if nothing was sent.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            state = scope["app"].state.service
            if started or not state.draining:
                raise
            exc = Draining(
                "the server shut down before this request finished; retry on another replica",
                retry_after_s=state.settings.retry_after_s,
            )
            await request_error_response(exc)(scope, receive, send)
