"""Bearer-key auth for the scoring routes (health, ready and metrics stay open)."""

from __future__ import annotations

import hmac

from fastapi import Request

from endorm_server.http.errors import APIError


def require_api_key(request: Request) -> None:
    keys: list[bytes] = request.app.state.service.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    presented = token.strip().encode()
    # Compare against every key, constant time, without stopping at a match.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented, key)
    if scheme.lower() != "bearer" or not ok:
        raise APIError(
            401,
            "missing or invalid API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": 'Bearer realm="endorm"'},
        )
