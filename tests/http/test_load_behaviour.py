"""Overload, client disconnects and SIGTERM, against real server processes."""

from __future__ import annotations

import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import psutil
import pytest

from tests.conftest import tiny_model
from tests.http.conftest import API_KEY, COMMON
from tests.reliability.conftest import metric
from tests.server import ServerProcess


def _heavy_item(seed: int, prompt_len: int = 480) -> dict:
    return {"prompt_ids": [(seed * 7 + i) % 500 + 5 for i in range(prompt_len)], "response_ids": [7, 8, 9, 10]}


def _engine_unfinished(url: str) -> float:
    return metric(url, "endorm_engine_unfinished_sequences")


@contextmanager
def _engine_frozen(server: ServerProcess):
    """SIGSTOP the engine processes for the body, so the requests sent meanwhile are surely
    still in flight when the test acts: on 2 cores a busy engine starved the test process
    for seconds (measured), and timing-based versions of these tests were flaky."""
    engine = psutil.Process(server.proc.pid).children(recursive=True)
    assert engine, "no engine process"
    for child in engine:
        child.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for child in engine:
            child.send_signal(signal.SIGCONT)


def test_client_disconnects_abort_engine_work(server):
    """Clients that hang up mid-request: their engine sequences are aborted, the count returns to 0."""
    body = {"items": [_heavy_item(i) for i in range(64)]}  # ~31k tokens per request
    seen_busy = threading.Event()

    def watch():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not seen_busy.is_set():
            if _engine_unfinished(server.url) > 0:
                seen_busy.set()
            time.sleep(0.05)

    def hang_up(_):
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=0.5) as c:
            try:
                r = c.post("/score", json=body)
                return f"finished {r.status_code}"
            except httpx.TimeoutException:
                return "hung up"

    watcher = threading.Thread(target=watch)
    watcher.start()
    with _engine_frozen(server), ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(hang_up, range(8)))
    watcher.join()
    assert seen_busy.is_set(), "the engine never had work: the test proves nothing"
    assert outcomes.count("hung up") >= 1, outcomes
    deadline = time.monotonic() + 15
    while _engine_unfinished(server.url) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _engine_unfinished(server.url) == 0
    metrics = httpx.get(server.url + "/metrics").text
    assert 'endorm_rejections_total{reason="client_disconnected"}' in metrics
    # and the server still answers
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        assert c.post("/score", json={"items": [{"prompt": "a", "response": "b"}]}).status_code == 200


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """A server with a small admission budget (1000 tokens) and a short admission wait."""
    proc = ServerProcess(
        ["--model", str(tiny_model("llama")), *COMMON, "--max-inflight-tokens", "1000", "--queue-timeout-s", "0.02",
         "--request-timeout-s", "0.5"],
        log_path=tmp_path_factory.mktemp("small") / "server.log",
    ).start()
    yield proc
    proc.stop()


def test_overload_answers_429_with_retry_after_and_no_5xx(small_server):
    body = {"items": [_heavy_item(i, 240) for i in range(4)]}  # ~976 tokens: one request fills the budget

    def post(_):
        r = httpx.post(small_server.url + "/score", json=body, timeout=60)
        return r.status_code, r.headers.get("retry-after"), r.json()

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(post, range(48)))
    codes = [code for code, _, _ in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    for code, retry_after, body_ in results:
        if code == 429:
            assert retry_after is not None and int(retry_after) >= 0
            assert body_["error"]["type"] == "overloaded"
    text = httpx.get(small_server.url + "/metrics").text
    assert re.search(r'^endorm_rejections_total\{reason="(wait_timeout|queue_full|tokens)"\} [1-9]', text, re.M)
    assert _engine_unfinished(small_server.url) == 0


@pytest.fixture()
def draining_server(tmp_path_factory):
    """A server that admits everything we send, so all requests are in flight at SIGTERM."""
    proc = ServerProcess(
        ["--model", str(tiny_model("llama")), *COMMON, "--max-inflight-tokens", "10000000", "--queue-timeout-s", "60",
         "--drain-timeout-s", "120"],
        log_path=tmp_path_factory.mktemp("drain") / "server.log",
    ).start()
    yield proc
    proc.stop()


def test_deadline_answers_504_and_aborts_engine_work(small_server):
    body = {"items": [_heavy_item(i) for i in range(64)]}  # ~31k tokens
    with _engine_frozen(small_server):  # past the 0.5 s deadline on any machine
        r = httpx.post(small_server.url + "/score", json=body, timeout=60)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout"
    deadline = time.monotonic() + 15
    while _engine_unfinished(small_server.url) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _engine_unfinished(small_server.url) == 0
    assert 'endorm_rejections_total{reason="deadline"}' in httpx.get(small_server.url + "/metrics").text


def test_sigterm_drains_without_failing_in_flight_requests(draining_server):
    body = {"items": [_heavy_item(i) for i in range(128)]}  # ~62k tokens per request
    statuses: list[int] = []

    def post(_):
        r = httpx.post(draining_server.url + "/score", json=body, timeout=120)
        statuses.append(r.status_code)
        return r.status_code

    # Long admission wait so every request is admitted in turn (none rejected before the signal).
    pool = ThreadPoolExecutor(8)
    during = []
    with _engine_frozen(draining_server):  # the drain cannot finish before the probes below
        futures = [pool.submit(post, i) for i in range(8)]
        deadline = time.monotonic() + 20
        while metric(draining_server.url, "endorm_in_flight_requests") < 8:  # all admitted before the signal
            assert time.monotonic() < deadline, "the requests were never all admitted"
            time.sleep(0.02)
        draining_server.signal(signal.SIGTERM)
        time.sleep(0.3)
        try:
            during.append(httpx.get(draining_server.url + "/ready", timeout=5).status_code)
            late = httpx.post(draining_server.url + "/score", json={"items": [{"prompt": "a", "response": "b"}]}, timeout=5)
            during.append(late.status_code)
            assert late.headers.get("retry-after") is not None
        except httpx.ConnectError:
            pytest.fail("server stopped accepting connections before in-flight requests finished")
    results = [f.result() for f in futures]
    pool.shutdown()
    code = draining_server.wait(timeout=90)
    assert code == 0, draining_server.log_tail()
    assert during == [503, 503], during
    assert results == [200] * 8, results  # no in-flight request failed
