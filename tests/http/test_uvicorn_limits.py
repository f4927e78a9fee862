"""What the served uvicorn (``endorm_server.http.server.build_server``, as ``endorm serve`` builds it)
bounds, on a real socket: SIGTERM to exit within one drain budget, the request head's size; and
what it does not bound (headers trickled slowly), as docs/security.md says.

The app is the served one over the stub engine (tests/http/stub_engine.py), without its lifespan
(which would start a real engine); the server runs in a thread on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from transformers import AutoTokenizer

from endorm_server.http.server import MAX_REQUEST_HEAD_BYTES, DrainingServer, build_server, exit_bound_s
from tests.conftest import tiny_model
from tests.http.stub_engine import StubEngine, service, stub_app, stub_scorer, stub_settings

DEADLINE_S = 60.0  # a guard against a hang, never a speed check


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model("llama")))


class Running:
    """A DrainingServer serving the stub app in a thread of its own."""

    def __init__(self, tokenizer: Any, **settings: Any) -> None:
        self.engine = StubEngine()
        model = str(tiny_model("llama"))
        self.app = stub_app(stub_settings(model, **settings), stub_scorer(tokenizer, self.engine))
        self.settings = self.app.state.service.settings
        self.server: DrainingServer = build_server(
            self.settings, self.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        end = time.monotonic() + DEADLINE_S
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE_S)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = self.server.force_exit = True
            self.thread.join(DEADLINE_S)


@pytest.fixture()
def running(tokenizer) -> Iterator:
    started: list[Running] = []

    def start(**settings: Any) -> Running:
        started.append(Running(tokenizer, **settings))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def _status(sock: socket.socket) -> bytes:
    """The status line of the first response (b"" when the server closed without one)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def _response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(status line and headers, body) of the first response, read until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def _score_held_in_engine(r) -> socket.socket:
    """Send one /score on a raw socket and wait (by control) until it is in the held engine."""
    body = b'{"items": [{"prompt_ids": [5, 6, 7], "response_ids": [8, 9]}]}'
    sock = r.connect()
    sock.sendall(
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    end = time.monotonic() + DEADLINE_S
    while r.engine.calls < 1:
        assert time.monotonic() < end, "the request never reached the engine"
        time.sleep(0.01)
    return sock


# ---------------------------------------------------------------- drain: one budget


def test_sigterm_to_exit_is_one_drain_budget_with_a_request_that_never_finishes(running):
    """A request held in the engine past the drain: the drain waits ``drain_timeout_s`` for it, and
    uvicorn's graceful shutdown gets only what is left (nothing), so the server exits within
    ``exit_bound_s``. With a graceful timeout of its own (drain + 5) it took 2 x drain + 5."""
    r = running(drain_timeout_s=1.0)
    r.engine.hold()
    sock = _score_held_in_engine(r)
    t0 = time.monotonic()
    r.server.handle_exit(signal.SIGTERM, None)  # as the signal handler calls it
    r.thread.join(DEADLINE_S)
    elapsed = time.monotonic() - t0
    assert not r.thread.is_alive(), "the server did not exit"
    assert service(r.app).drain_started_at is not None, "no drain ran"
    assert r.server.config.timeout_graceful_shutdown <= r.settings.drain_timeout_s
    assert elapsed <= exit_bound_s(r.settings), f"SIGTERM to exit {elapsed:.1f} s > {exit_bound_s(r.settings)} s"
    # uvicorn cancels it (the pod would be killed with it in flight otherwise); it is answered 503 with
    # Retry-After, like a request that arrived during the drain, not uvicorn's 500 (http/middleware.py)
    head, body = _response(sock)
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 503 Service Unavailable", head
    assert b"retry-after: " in head.lower()
    assert json.loads(body)["error"]["code"] == "draining"
    sock.close()


def test_a_request_that_finishes_in_the_drain_is_answered(running):
    """The graceful wait after an early drain still has the rest of the budget: the answer is sent."""
    r = running(drain_timeout_s=600.0)
    r.engine.hold()
    sock = _score_held_in_engine(r)
    r.server.handle_exit(signal.SIGTERM, None)
    end = time.monotonic() + DEADLINE_S
    while not service(r.app).draining:
        assert time.monotonic() < end, "the drain never began"
        time.sleep(0.01)
    r.server._loop.call_soon_threadsafe(r.engine.release)  # type: ignore[union-attr]
    assert _status(sock) == b"HTTP/1.1 200 OK"
    r.thread.join(DEADLINE_S)
    assert not r.thread.is_alive(), "the server did not exit"
    sock.close()


# ---------------------------------------------------------------- the request head


def _get_with_header(r: Running, size: int, *, complete: bool = True) -> bytes:
    with r.connect() as sock:
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * size
        try:
            sock.sendall(head + (b"\r\n\r\n" if complete else b""))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: the status line is in the socket's buffer
        return _status(sock)


def test_an_oversized_request_head_is_refused(running):
    """h11 refuses a head once more than MAX_REQUEST_HEAD_BYTES of it are buffered incomplete
    (httptools, uvicorn's default parser, answered a 2 MB header 200). A head that arrives whole in
    one read (asyncio reads up to 256 KiB) is parsed whatever its size: the bound on memory is the
    limit plus one read, which docs/security.md states."""
    r = running()
    assert _get_with_header(r, 2 * 1024 * 1024).startswith(b"HTTP/1.1 400")
    # incomplete and over the limit, however the server's reads cut it
    assert _get_with_header(r, MAX_REQUEST_HEAD_BYTES + 1, complete=False).startswith(b"HTTP/1.1 400")


def test_a_large_head_within_the_limit_is_served(running):
    r = running()
    assert _get_with_header(r, MAX_REQUEST_HEAD_BYTES - 1024) == b"HTTP/1.1 200 OK"


def test_headers_trickled_slowly_are_not_bounded_by_the_bare_server(running):
    """The limit docs/security.md states: no header timeout in uvicorn. Half a request head, then a
    pause well past the keep-alive timeout (which only bounds an idle connection between requests),
    then the rest: still served. A proxy (the Envoy Gateway overlay's ClientTrafficPolicy) bounds it."""
    r = running()
    r.server.config.timeout_keep_alive = 0.2  # read per connection, when it is made
    with r.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        time.sleep(2.0)  # 10 x the keep-alive timeout: longer only makes the point stronger
        sock.sendall(b"X-Late: 1\r\n\r\n")
        assert _status(sock) == b"HTTP/1.1 200 OK"


def test_a_half_sent_body_gets_408_and_the_connection_closes(running):
    """The body deadline on the served parser (h11): 408, then the server closes the connection."""
    r = running(body_timeout_s=0.5)
    with r.connect() as sock:
        sock.sendall(
            b'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"it'
        )
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
