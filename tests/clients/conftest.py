"""Fixtures for the SDK and trainer-integration tests.

The live server is the shared ``server`` fixture (tests/conftest.py: auth on,
``--max-items-per-request 64``). Behaviour a healthy server does not show on demand
(429 with Retry-After, 503 without, hanging reads) comes from a small scripted HTTP
server: a real uvicorn process-thread on 127.0.0.1, not a mocked transport.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import API_KEY
from tests.server import free_port

SCORE_OK = {
    "model": "stub",
    "alpha": 1.0,
    "aggregation": "sum",
    "results": [{"index": 0, "score": 1.5, "num_tokens": 2, "prompt_tokens": 3}],
    "usage": {"prompt_tokens": 3, "total_tokens": 5},
}


@dataclass
class Seen:
    path: str
    at: float
    headers: dict
    body: bytes


HOLD = "hold"  # a scripted delay that lasts until the test releases it: a reply that surely comes too late


@dataclass
class StubServer:
    """Answers each request with the next scripted (status, headers, body, delay_s); then 200 SCORE_OK.

    ``delay_s`` may be ``HOLD``: the reply waits until ``release()`` (or the next ``reply()``), so a
    client's read timeout fires on any machine, however slow, without a race against a timer."""

    url: str = ""
    script: list = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    released: int = 0  # bumped by release(): held replies go out

    def reply(self, *responses) -> StubServer:
        self.release()
        self.script = list(responses)
        self.seen.clear()
        return self

    def release(self) -> None:
        self.released += 1

    def gaps(self) -> list[float]:
        return [b.at - a.at for a, b in zip(self.seen, self.seen[1:])]


def _error(status: int, type_: str, message: str = "scripted") -> dict:
    return {"error": {"type": type_, "message": message, "param": None}}


@pytest.fixture(scope="session")
def stub() -> StubServer:
    state = StubServer()

    async def handle(request: Request):
        state.seen.append(Seen(request.url.path, time.monotonic(), dict(request.headers), await request.body()))
        status, headers, body, delay = state.script.pop(0) if state.script else (200, {}, SCORE_OK, 0)
        if delay == HOLD:
            held = state.released
            while state.released == held:
                await asyncio.sleep(0.01)
        elif delay:
            await asyncio.sleep(delay)
        return JSONResponse(body, status_code=status, headers=headers)

    app = Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "stub server did not start"
        time.sleep(0.02)
    state.url = f"http://127.0.0.1:{port}"
    yield state
    state.release()
    server.should_exit = True
    thread.join(10)


def err(status: int, type_: str, retry_after: str | None = None, delay: float = 0):
    return (status, {"Retry-After": retry_after} if retry_after is not None else {}, _error(status, type_), delay)


@pytest.fixture()
def dead_url() -> str:
    """A URL nothing listens on (connection refused)."""
    port = free_port()
    with socket.socket() as s:  # make sure it is closed
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return f"http://127.0.0.1:{port}"


def metric(server_url: str, name: str, **labels) -> float:
    """One sample of the live server's /metrics (0 when absent)."""
    text = httpx.get(server_url + "/metrics", timeout=120).text
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if (
            m
            and m.group(1) == name
            and dict(_LABEL.findall(m.group(2) or "")) == {k: str(v) for k, v in labels.items()}
        ):
            return float(m.group(3))
    return 0.0


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


__all__ = ["API_KEY", "HOLD", "StubServer", "err", "metric", "SCORE_OK"]
