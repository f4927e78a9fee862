"""Bearer-key auth for the keyed routes, decided from the headers before a byte of the body is read.

Pure ASGI, not a FastAPI dependency: a dependency runs after FastAPI has read and parsed the body, so
an unauthenticated client would get a body's worth of JSON parsing for free, and a malformed body
without a key would answer 422 instead of 401. Routes opt in with ``APIRouter(route_class=KeyedRoute)``
(health, readiness, metrics, the docs and the inspector's static page stay open).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

CHALLENGE = 'Bearer realm="endorm"'


class KeyedRoute(APIRoute):
    """A route that needs ``Authorization: Bearer <key>`` when the server has keys."""


def _digest(key: bytes) -> bytes:
    # Compare fixed-length digests: compare_digest on the raw keys would return early on a length mismatch
    return hashlib.sha256(key).digest()


class ApiKeyMiddleware:
    """401 for a request to a :class:`KeyedRoute` without a configured key, before the body is read.

    ``routes`` is the app's live route list: the route a request would reach is found as the router
    finds it (the first full match), so a wrong method still answers 405 and an unknown path 404.
    """

    def __init__(self, app: ASGIApp, keys: Sequence[bytes], routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.digests = [_digest(k) for k in keys]
        self.routes = routes

    def _keyed_route(self, scope: Scope) -> BaseRoute | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route if isinstance(route, KeyedRoute) else None
        return None

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        presented = _digest(token.strip())
        # Every key is compared, in constant time, without stopping at a match.
        ok = False
        for digest in self.digests:
            ok |= hmac.compare_digest(presented, digest)
        return ok and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.digests:
            return await self.app(scope, receive, send)
        route = self._keyed_route(scope)
        if route is None or self._authorized(scope):
            return await self.app(scope, receive, send)
        scope["route"] = route  # the access log and metrics name the route, as for any other answer
        await _unauthorized(send)


async def _unauthorized(send: Send) -> None:
    body = json.dumps(
        {
            "error": {
                "type": "unauthorized",
                "code": "unauthorized",
                "message": "missing or invalid API key (Authorization: Bearer <key>)",
                "param": None,
            }
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", CHALLENGE.encode()),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
