"""Hostile input: each a clear 4xx in the one error shape, never a 500 or a hang."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import API_KEY
from tests.http.conftest import assert_error

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "raw,status",
    [
        (b"\xff\xfe\xfa{", 422),  # invalid UTF-8
        (b"[" * 50_000 + b"]" * 50_000, 422),  # deeply nested
        (b'{"items": ' + b"[" * 3000 + b"]" * 3000 + b"}", 422),  # nested inside a field
        (b'{"items": [{"prompt": "\\ud800", "response": "x"}]}', 422),  # lone surrogate
        (b'{"items": [{"prompt_ids": [1e400], "response_ids": [1]}]}', 422),
        (b'{"items": [{"prompt_ids": [1, 2], "response_ids": [99999999999999999999999]}]}', 422),
        (b'{"items": [{"prompt_ids": [1, 2], "response_ids": [-5]}]}', 422),
        (b'{"items": [{"prompt": "x", "response": "y"}], "gamma": NaN}', 422),
        (b'{"items": [{"prompt": "x", "response": "y"}], "beta": -Infinity}', 422),
        (b'{"items": [{"prompt": "x", "response": "y"}], "gamma": -1}', 422),
        (b'{"items": [{"prompt": "x", "response": "y"}], "return_tokens": "yes"}', 422),
        (b"null", 422),
        (b'"items"', 422),
        (b"", 422),
    ],
)
def test_malformed_bodies(client, raw, status):
    assert_error(client.post("/score", content=raw, headers=JSON), status)


def test_huge_and_many(client):
    assert_error(client.post("/score", json={"items": [{"prompt": "x" * 2_000_000, "response": "y"}]}), 413)
    assert_error(client.post("/score", json={"items": [{"prompt_ids": [1], "response_ids": [2]}] * 5000}), 413)
    assert_error(client.post("/compare", json={"prompt": "x", "responses": ["y"] * 5000}), 413)
    assert_error(client.post("/score", json={"items": [{"prompt_ids": [1] * 100_000, "response_ids": [2]}]}), 413)


def test_wrong_content_type_and_method(client):
    err = assert_error(client.post("/score", content=b'{"items": []}', headers={"content-type": "text/plain"}), 415)
    assert err["code"] == "unsupported_media_type"
    assert_error(client.get("/score"), 405)
    assert_error(client.get("/no-such-route"), 404)


def test_slowloris_body_is_cut_off_with_408(server):
    """A client that sends half a body and then nothing, keeping the connection open: past the body
    deadline (3 s on this server) the server answers 408 and closes the connection, instead of holding
    it for as long as the client likes. Meanwhile it serves others."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:  # a guard against a hang
        s.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
            + f"Authorization: Bearer {API_KEY}\r\n\r\n".encode()  # the key is checked first: a keyless one gets 401
            + b'{"it'
        )
        assert httpx.get(server.url + "/health", timeout=60).status_code == 200
        answer = b""
        while chunk := s.recv(65536):  # until the server closes the connection
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["error"]["code"] == "body_timeout"
