"""The key is checked from the headers before the body is read: a request without a valid key costs the
server no body bytes and no JSON parsing, and answers 401 whatever its body is.

The stub-engine app (tests/http/stub_engine.py) is the served one without a real engine; the raw-socket
test runs against the shared real server (tests/conftest.py), under uvicorn.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from tests.conftest import API_KEY, tiny_model
from tests.http.conftest import assert_error
from tests.http.stub_engine import StubEngine, asgi_client, stub_app, stub_scorer, stub_settings

KEYS = ["first-key-0123456789", "second-key-abcdefghij", "third-key-ZYXWVUTSRQ"]
ITEM = {"prompt_ids": [5, 6, 7], "response_ids": [8, 9]}
KEYED = [
    ("POST", "/score"),
    ("POST", "/v1/score"),
    ("POST", "/compare"),
    ("POST", "/v1/compare"),
    ("POST", "/get_reward"),
    ("POST", "/classify"),
    ("POST", "/v1/classify"),
    ("GET", "/v1/models"),
]


@pytest.fixture(scope="module")
def app() -> Any:
    """One stub app with three keys; nothing here changes its state."""
    model = str(tiny_model("llama"))
    engine = StubEngine()
    return stub_app(stub_settings(model, api_keys=KEYS), stub_scorer(AutoTokenizer.from_pretrained(model), engine))


def _unauthorized(r: httpx.Response) -> None:
    err = assert_error(r, 401)
    assert err["type"] == "unauthorized" and err["code"] == "unauthorized" and err["param"] is None, err
    assert r.headers["www-authenticate"].startswith("Bearer"), r.headers
    assert r.headers.get("x-request-id"), "a 401 keeps the request id"


async def test_malformed_body_without_a_key_is_401_not_422(app):
    async with asgi_client(app) as anon:
        for method, path in KEYED:
            for body in (b"{not json", b"\xff\xfe", b'{"items": [{"prompt": 1}]}', b"[]"):
                r = await anon.request(method, path, content=body, headers={"content-type": "application/json"})
                _unauthorized(r)
    async with asgi_client(app, headers={"Authorization": f"Bearer {KEYS[0]}"}) as keyed:
        r = await keyed.post("/score", content=b"{not json", headers={"content-type": "application/json"})
        assert_error(r, 422)  # with a key, the same body reaches the parser


async def test_body_over_the_limit_without_a_key_is_401(app):
    # the size limit is not a free probe either: without a key, 401 comes first
    async with asgi_client(app) as anon:
        _unauthorized(await anon.post("/score", content=b"x" * 50_000, headers={"content-type": "application/json"}))
    async with asgi_client(app, headers={"Authorization": f"Bearer {KEYS[1]}"}) as keyed:
        assert_error(await keyed.post("/score", content=b"x" * 50_000), 413)


async def test_401_without_calling_receive(app):
    """At the ASGI level: the app answers 401 without asking for a single body message."""
    received: list[dict] = []
    sent: list[dict] = []

    async def receive() -> dict:
        message = {"type": "http.request", "body": b"{not json", "more_body": False}
        received.append(message)
        return message

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/score",
        "raw_path": b"/score",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"stub"), (b"content-type", b"application/json"), (b"content-length", b"9")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    assert sent and sent[0]["type"] == "http.response.start" and sent[0]["status"] == 401, sent
    assert received == [], "the body was read before the key was checked"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong-key",
        f"Bearer {KEYS[0][:-1]}",  # a prefix of a key
        f"Bearer {KEYS[0][:1]}",
        f"Bearer {KEYS[1]}x",  # a key and more
        f"Bearer {KEYS[0]}{KEYS[1]}",  # two keys run together
        f"Bearer {KEYS[2].upper()}",
        f"Basic {KEYS[0]}",
        KEYS[0],  # no scheme
        f"Token {KEYS[0]}",
    ],
)
async def test_wrong_keys_are_refused(app, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    async with asgi_client(app, headers=headers) as c:
        for method, path in KEYED:
            _unauthorized(await c.request(method, path, json={"items": [ITEM]}))


async def test_every_configured_key_passes(app):
    for key in KEYS:
        for authorization in (f"Bearer {key}", f"bearer {key}", f"Bearer {key} "):
            async with asgi_client(app, headers={"Authorization": authorization}) as c:
                r = await c.post("/score", json={"items": [ITEM]})
                assert r.status_code == 200, (authorization, r.text)
                assert (await c.get("/v1/models")).status_code == 200


async def test_open_routes_stay_open_and_routing_answers_stay(app):
    async with asgi_client(app) as anon:
        for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json", "/inspect", "/inspect/inspector.js"):
            assert (await anon.get(path)).status_code == 200, path
        assert_error(await anon.get("/inspect/nope.txt"), 404)
        assert_error(await anon.get("/no-such-route"), 404)
        assert_error(await anon.get("/score"), 405)  # a wrong method is not a keyed request


def test_401_before_the_body_is_sent(server):
    """A real uvicorn server answers 401 to the headers alone: the client never sends the body it
    announced. Reading the body first would wait for it until the body deadline (408)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
        sock.sendall(
            (
                f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 900000\r\nX-Request-ID: before-body-1\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {head!r}"
            head += chunk
    status_line, _, rest = head.partition(b"\r\n")
    assert status_line.split()[1] == b"401", head
    assert b"x-request-id: before-body-1" in rest.lower(), head
    # with the key, the body is read and parsed as before
    with httpx.Client(base_url=server.url, timeout=120) as c:
        headers = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
        r = c.post("/score", content=b"{not json", headers=headers)
        assert_error(r, 422)


async def test_401_carries_cors_headers_for_a_configured_origin():
    """CORS sits outside the key check, so a browser on an allowed origin can read its 401."""
    model = str(tiny_model("llama"))
    settings = stub_settings(model, api_keys=KEYS, cors_origins=["https://trainer.example"])
    app = stub_app(settings, stub_scorer(AutoTokenizer.from_pretrained(model), StubEngine()))
    async with asgi_client(app, headers={"Origin": "https://trainer.example"}) as c:
        r = await c.post("/score", json={"items": [ITEM]})
        _unauthorized(r)
        assert r.headers.get("access-control-allow-origin") == "https://trainer.example", r.headers
