from __future__ import annotations

import httpx

from tests.conftest import API_KEY, COMMON  # noqa: F401  (re-exported for the HTTP tests)


def assert_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"type", "message", "param"} <= set(body["error"]), body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]
