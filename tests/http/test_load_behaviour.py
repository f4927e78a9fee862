"""Overload, client disconnects, deadlines and SIGTERM, against real server processes.

Every outcome here is decided by the test's own control, never by the machine's speed:
the engine is frozen (SIGSTOP) while the test acts on in-flight requests, and states
that must come (a request admitted, a drain begun) are polled for with a generous
deadline instead of slept for.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import tiny_server
from tests.freeze import processes_frozen, server_engine
from tests.http.conftest import API_KEY
from tests.reliability.conftest import PATIENCE_S, metric, open_score_request, rejections, request_errors, wait_for
from tests.server import ServerProcess


def _heavy_item(seed: int, prompt_len: int = 480) -> dict:
    return {"prompt_ids": [(seed * 7 + i) % 500 + 5 for i in range(prompt_len)], "response_ids": [7, 8, 9, 10]}


def _engine_unfinished(url: str) -> float:
    return metric(url, "endorm_engine_unfinished_sequences")


def _engine_frozen(server: ServerProcess):
    """SIGSTOP the engine processes for the body, so the requests sent meanwhile are surely
    still in flight when the test acts: on 2 cores a busy engine starved the test process
    for seconds (measured), and timing-based versions of these tests were flaky."""
    return processes_frozen(server_engine(server))


def test_client_disconnects_abort_engine_work(server):
    """Clients that hang up mid-request: their engine sequences are aborted, the count returns to 0."""
    # 4 requests of 64 distinct sequences each (~15.6k tokens: 4 fit the budget); distinct across requests
    # too, or identical sequences in flight would share one engine call
    bodies = [{"items": [_heavy_item(64 * k + i, 240) for i in range(64)]} for k in range(4)]
    disconnected_before = request_errors(server.url, "client_disconnected")
    with _engine_frozen(server):  # nothing can finish: the hang-ups surely land mid-request
        socks = [open_score_request(server.port, body, API_KEY) for body in bodies]
        wait_for(lambda: _engine_unfinished(server.url) == 4 * 64, "all 256 sequences in the engine")
        for sock in socks:
            sock.close()
        # the aborts need no engine step: the server forgets the sequences at once, frozen or not
        wait_for(lambda: _engine_unfinished(server.url) == 0, "engine sequences aborted")
    wait_for(lambda: metric(server.url, "endorm_in_flight_requests") == 0, "admission budget released")
    assert request_errors(server.url, "client_disconnected") - disconnected_before == 4
    # and the server still answers
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=PATIENCE_S) as c:
        assert c.post("/score", json={"items": [{"prompt": "a", "response": "b"}]}).status_code == 200


@pytest.fixture()
def small_server(tmp_path_factory):
    """A server with a short deadline (0.5 s), for the 504 test (one test each: stopped right after)."""
    with tiny_server(
        tmp_path_factory,
        "small",
        "--max-inflight-tokens",
        "1000",
        "--queue-timeout-s",
        "0.02",
        "--request-timeout-s",
        "0.5",
    ) as proc:
        yield proc


def test_overload_answers_429_with_retry_after_and_no_5xx(limited_server):
    """The budget (4000 tokens) is full and cannot free (engine frozen): every request that arrives waits
    its 0.2 s for room and gets 429 + Retry-After; the admitted one answers 200 once the engine runs again."""
    url = limited_server.url
    first_body = {"items": [_heavy_item(i, 240) for i in range(16)]}  # 3904 tokens: fills the budget
    body = {"items": [_heavy_item(i, 240) for i in range(4)]}  # 976 tokens: more than the 96 left
    late = 8

    def post(n):
        r = httpx.post(url + "/score", json=first_body if n == "first" else body, timeout=PATIENCE_S)
        return r.status_code, r.headers.get("retry-after"), r.json()

    timeouts_before = rejections(url, "wait_timeout")
    with ThreadPoolExecutor(late + 1) as pool:
        with _engine_frozen(limited_server):
            first = pool.submit(post, "first")
            wait_for(lambda: metric(url, "endorm_in_flight_requests") == 1, "the first request admitted")
            rejected = list(pool.map(post, range(late)))  # all arrive and time out of the queue while frozen
            assert not first.done() and metric(url, "endorm_in_flight_requests") == 1
            assert metric(url, "endorm_waiting_requests") == 0
        code, _, answer = first.result(timeout=PATIENCE_S)
    assert code == 200 and len(answer["results"]) == 16, answer
    for code, retry_after, answer in rejected:
        assert code == 429, (code, answer)
        assert retry_after is not None and int(retry_after) >= 0
        assert answer["error"]["type"] == "overloaded"
    assert rejections(url, "wait_timeout") - timeouts_before == late
    wait_for(lambda: _engine_unfinished(url) == 0, "engine idle")
    assert metric(url, "endorm_in_flight_tokens") == 0


def test_deadline_answers_504_and_aborts_engine_work(small_server):
    body = {"items": [_heavy_item(i) for i in range(64)]}  # ~31k tokens
    with _engine_frozen(small_server):  # past the 0.5 s deadline on any machine
        r = httpx.post(small_server.url + "/score", json=body, timeout=PATIENCE_S)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout"
    wait_for(lambda: _engine_unfinished(small_server.url) == 0, "engine sequences aborted")
    assert request_errors(small_server.url, "deadline_exceeded") >= 1


@pytest.fixture()
def draining_server(tmp_path_factory):
    """A server that admits everything we send, so all requests are in flight at SIGTERM; its drain
    grace is far past the work, so only a bug can make an in-flight request fail."""
    with tiny_server(
        tmp_path_factory,
        "drain",
        "--max-inflight-tokens",
        "10000000",
        "--queue-timeout-s",
        "60",
        "--drain-timeout-s",
        "600",
    ) as proc:
        yield proc


def test_sigterm_drains_without_failing_in_flight_requests(draining_server):
    url = draining_server.url
    body = {"items": [_heavy_item(i, 240) for i in range(16)]}  # ~3.9k tokens per request

    def post(_):
        return httpx.post(url + "/score", json=body, timeout=PATIENCE_S).status_code

    pool = ThreadPoolExecutor(8)
    during = []
    with _engine_frozen(draining_server):  # the drain cannot finish before the probes below
        futures = [pool.submit(post, i) for i in range(8)]
        wait_for(lambda: metric(url, "endorm_in_flight_requests") == 8, "all 8 requests admitted before the signal")
        draining_server.signal(signal.SIGTERM)
        try:
            # the drain must begin: /ready turns 503 (polled, not slept for)
            wait_for(lambda: httpx.get(url + "/ready", timeout=PATIENCE_S).status_code == 503, "/ready 503")
            during.append(503)
            late = httpx.post(url + "/score", json={"items": [{"prompt": "a", "response": "b"}]}, timeout=PATIENCE_S)
            during.append(late.status_code)
            assert late.headers.get("retry-after") is not None
        except httpx.ConnectError:
            pytest.fail("server stopped accepting connections before in-flight requests finished")
        assert not any(f.done() for f in futures), "an in-flight request ended while the engine was frozen"
    results = [f.result() for f in futures]
    pool.shutdown()
    code = draining_server.wait(timeout=PATIENCE_S)
    assert code == 0, draining_server.log_tail()
    assert during == [503, 503], during
    assert results == [200] * 8, results  # no in-flight request failed
