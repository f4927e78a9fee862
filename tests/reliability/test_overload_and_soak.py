"""Offered load past capacity, many disconnecting clients, and a steady soak.

Behaviour only: status codes, Retry-After, counters back to zero, memory
back near its baseline. CI runs short variants; ``make test-slow`` runs the
long soak.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest

from tests.freeze import processes_frozen, server_engine
from tests.reliability.conftest import metric, open_score_request, rejections, request_errors, tree_rss_bytes, wait_for

MB = 2**20


def _body(seed: int, items: int = 4, prompt_len: int = 240) -> dict:
    return {
        "items": [
            {"prompt_ids": [(seed + i * 13 + j) % 500 + 5 for j in range(prompt_len)], "response_ids": [7, 8, 9]}
            for i in range(items)
        ]
    }


def _drive(
    url: str, seconds: float, workers: int, make_body, until: threading.Event | None = None
) -> list[tuple[object, float, str | None]]:
    """Closed-loop load: ``workers`` clients posting back to back for ``seconds`` (and, given
    ``until``, until it is set: the test's own phase then ends the load, not the clock)."""
    results: list[tuple[object, float, str | None]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def going() -> bool:
        return time.monotonic() < stop or (until is not None and not until.is_set())

    def worker(w: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            n = 0
            while going():
                t = time.monotonic()
                try:
                    r = c.post("/score", json=make_body(w * 1000 + n))
                    item = (r.status_code, time.monotonic() - t, r.headers.get("retry-after"))
                except httpx.TransportError as exc:
                    item = (type(exc).__name__, time.monotonic() - t, None)
                with lock:
                    results.append(item)
                n += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _settle(url: str, patience_s: float = 120) -> None:
    """Wait for the work to leave: it must, so the deadline only guards against a hang."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        if metric(url, "endorm_engine_unfinished_sequences") == 0 and metric(url, "endorm_in_flight_tokens") == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"work still in flight {patience_s:.0f} s after the load stopped")


def _engine_frozen(server):
    """SIGSTOP the engine processes for the body: admitted work cannot finish meanwhile."""
    return processes_frozen(server_engine(server))


def test_overload_only_200_429_503_and_memory_returns(limited_server):
    url = limited_server.url
    _drive(url, 3, 2, _body)  # warm: allocator pools, caches
    _settle(url)
    baseline = tree_rss_bytes(limited_server.proc.pid)
    unloaded = [t for s, t, _ in _drive(url, 3, 1, _body) if s == 200]

    # Past capacity whatever the machine's speed: each request (16 x 243 = 3888 tokens)
    # fills the 4000-token budget alone, and 32 clients offer load back to back. Whether a
    # 429 comes in a free-running window depends on speed (a fast, idle machine drained the
    # queue in time and no 429 came, seen in CI), so part of the window runs with the engine
    # frozen: the admitted request cannot finish, and the waiters surely time out of the
    # 0.2 s admission wait with 429s.
    timeouts_before = rejections(url, "wait_timeout")
    frozen_phase_over = threading.Event()
    with ThreadPoolExecutor(1) as runner:
        try:
            # frozen while idle (the warm-up drives have finished), never in the middle of a step
            with _engine_frozen(limited_server):
                drive = runner.submit(
                    _drive,
                    url,
                    float(os.environ.get("ENDORM_OVERLOAD_S", 12)),
                    32,
                    lambda seed: _body(seed, items=16),
                    frozen_phase_over,
                )
                deadline = time.monotonic() + 120  # must come: the budget cannot free while frozen
                while rejections(url, "wait_timeout") - timeouts_before < 32:
                    assert time.monotonic() < deadline, "no 429 while the budget was held"
                    time.sleep(0.05)
        finally:
            frozen_phase_over.set()
        results = drive.result()
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429, 503}, sorted(set(map(str, statuses)))
    assert statuses.count(429) >= 32 and statuses.count(200) > 0
    assert all(ra is not None for s, _, ra in results if s in (429, 503))
    admitted = sorted(t for s, t, _ in results if s == 200)
    p99 = admitted[int(0.99 * (len(admitted) - 1))]
    # The figures are reported, never asserted (they depend on the machine's speed); that every
    # admitted request finished within the deadline is the status check above (no 504).
    print(
        f"\noverload: {len(results)} requests, {statuses.count(200)} admitted, {statuses.count(429)} x 429; "
        f"admitted p50 {statistics.median(admitted):.3f} s p99 {p99:.3f} s "
        f"(unloaded median {statistics.median(unloaded):.3f} s)"
    )

    _settle(url)
    after = tree_rss_bytes(limited_server.proc.pid)
    print(f"memory: baseline {baseline / MB:.0f} MB, after overload {after / MB:.0f} MB")
    assert after < baseline * 1.10 + 50 * MB


def test_many_disconnecting_clients_leave_nothing_behind(limited_server):
    """Clients that hang up while their request is in the engine: decided by control. The engine is
    frozen, so every request is certainly admitted and unfinished when its client goes; each disconnect
    must cancel its work (counted as client_disconnected), release the budget and leave no memory."""
    url, port = limited_server.url, limited_server.port
    _settle(url)
    before = tree_rss_bytes(limited_server.proc.pid)
    per_round = 12  # 12 x 203 tokens fit the 4000-token budget: all admitted at once
    for round_ in range(3):
        gone_before = request_errors(url, "client_disconnected")
        with processes_frozen(server_engine(limited_server)):
            socks = [
                open_score_request(port, _body(round_ * 100 + i, items=1, prompt_len=200)) for i in range(per_round)
            ]
            wait_for(lambda: metric(url, "endorm_in_flight_requests") == per_round, "every request admitted")
            for sock in socks:
                sock.close()
            wait_for(
                lambda: request_errors(url, "client_disconnected") - gone_before == per_round,  # noqa: B023
                "every disconnect noticed",
            )
        _settle(url)
        assert metric(url, "endorm_in_flight_requests") == 0
        assert metric(url, "endorm_waiting_requests") == 0
    after = tree_rss_bytes(limited_server.proc.pid)
    assert after < before * 1.10 + 50 * MB, (before / MB, after / MB)
    assert httpx.post(url + "/score", json=_body(1), timeout=300).status_code == 200  # not httpx's default 5 s


def _soak(server, rounds: int) -> None:
    """Steady load counted in requests, not seconds: after warm-up rounds, the API process's memory
    grows by less than a bound per 1000 requests and the engine processes stay near their level
    (their allocator grows with new shapes first). A slow machine runs the same requests, only longer."""
    url = server.url
    per_round, workers = 200, 4
    body = lambda n: _body(n, items=2, prompt_len=120)  # noqa: E731
    api = psutil.Process(server.proc.pid)

    def one_round(r: int) -> list:
        done = _requests(url, per_round, workers, lambda n: body(r * 10_000 + n))
        _settle(url)
        return done

    for r in range(2):  # warm-up: same shapes, not sampled
        one_round(r)
    samples = [(0, api.memory_info().rss, tree_rss_bytes(server.proc.pid))]
    statuses: list = []
    for r in range(rounds):
        statuses += [s for s, _, _ in one_round(2 + r)]
        samples.append(((r + 1) * per_round, api.memory_info().rss, tree_rss_bytes(server.proc.pid)))
    assert set(statuses) <= {200, 429}, set(map(str, statuses))
    n = np.array([x[0] for x in samples])
    api_mb = np.array([x[1] for x in samples]) / MB
    tree_mb = np.array([x[2] for x in samples]) / MB
    per_1000 = np.polyfit(n, api_mb, 1)[0] * 1000  # MB per 1000 requests
    print(
        f"\nsoak {len(statuses)} requests: API process {api_mb[0]:.0f} -> {api_mb[-1]:.0f} MB "
        f"(trend {per_1000:+.2f} MB per 1000 requests); all processes {tree_mb[0]:.0f} -> {tree_mb[-1]:.0f} MB"
    )
    assert per_1000 < 10, f"API process memory grows {per_1000:.1f} MB per 1000 requests"
    assert tree_mb[-1] < tree_mb[0] * 1.05 + 50


def _requests(url: str, n: int, workers: int, make_body) -> list[tuple[object, float, str | None]]:
    """Exactly ``n`` requests from ``workers`` closed-loop clients (how long they take is not the test's)."""
    numbers = iter(range(n))
    lock = threading.Lock()
    results: list[tuple[object, float, str | None]] = []

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while True:
                with lock:
                    i = next(numbers, None)
                if i is None:
                    return
                t = time.monotonic()
                r = c.post("/score", json=make_body(i))
                with lock:
                    results.append((r.status_code, time.monotonic() - t, r.headers.get("retry-after")))

    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(worker) for _ in range(workers)]:
            f.result()
    return results


def test_soak_short(limited_server):
    _soak(limited_server, int(os.environ.get("ENDORM_SOAK_ROUNDS", 5)))


@pytest.mark.slow
def test_soak_long(limited_server):
    _soak(limited_server, int(os.environ.get("ENDORM_SOAK_LONG_ROUNDS", 50)))
