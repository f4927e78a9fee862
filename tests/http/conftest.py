from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import tiny_model
from tests.server import ServerProcess

API_KEY = "test-key-0123456789"
COMMON = ["--dtype", "float32", "--max-model-len", "512", "--max-num-batched-tokens", "128",
          "--kv-cache-gb", "1", "--gpu-memory-utilization", "0.05", "--enforce-eager"]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    """The shared server: auth on, generous admission limits, small body/items limits."""
    proc = ServerProcess(
        ["--model", str(tiny_model("llama")), *COMMON, "--api-key", API_KEY, "--max-items-per-request", "64",
         "--max-body-bytes", "1000000", "--max-inflight-tokens", "100000", "--request-timeout-s", "60"],
        log_path=tmp_path_factory.mktemp("server") / "server.log",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture()
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


@pytest.fixture()
def anon(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def assert_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"type", "message", "param"} <= set(body["error"]), body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]
