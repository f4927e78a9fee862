"""Keys are never logged, no CORS unless configured, the body limit acts before parsing."""

from __future__ import annotations

import httpx
from starlette.testclient import TestClient

from endorm_server.config import Settings
from endorm_server.http.app import create_app
from tests.conftest import API_KEY, tiny_model
from tests.http.conftest import assert_error


def test_keys_never_logged(server, client, anon):
    wrong = "wrong-secret-key-987654321"
    client.post("/score", json={"items": [{"prompt": "a", "response": "b"}]})
    anon.post("/score", json={"items": []}, headers={"Authorization": f"Bearer {wrong}"})
    client.post("/score", json={"bad": 1})
    log = server.log_tail(n=10**9)
    assert '"path": "/score"' in log, "no access log lines: the test would prove nothing"
    assert API_KEY not in log and wrong not in log


def test_no_cors_by_default(anon):
    pre = anon.options("/score", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    r = anon.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_only_for_configured_origins():
    app = create_app(Settings(model=str(tiny_model("llama")), cors_origins=["https://trainer.example"]))
    client = TestClient(app)  # no lifespan: CORS is answered by the middleware alone
    ok = client.options(
        "/score", headers={"Origin": "https://trainer.example", "Access-Control-Request-Method": "POST"}
    )
    assert ok.headers.get("access-control-allow-origin") == "https://trainer.example"
    bad = client.options("/score", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in bad.headers


def test_body_limit_before_parsing(server):
    # 2 MB of bytes that are not JSON: rejected by size (413), not by the parser (422).
    r = httpx.post(
        server.url + "/score",
        content=b"\x00" * 2_000_000,
        headers={"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
        timeout=120,
    )
    assert_error(r, 413)
    # without a key, the key is checked first (from the headers, tests/http/test_auth_before_body.py)
    r = httpx.post(
        server.url + "/score", content=b"\x00" * 2_000_000, headers={"content-type": "application/json"}, timeout=120
    )  # httpx's default 5 s is a speed check on a loaded machine
    assert_error(r, 401)
