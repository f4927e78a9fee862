"""Offered load past capacity, many disconnecting clients, and a steady soak.

Behaviour only: status codes, Retry-After, counters back to zero, memory
back near its baseline. CI runs short variants; ``make test-slow`` runs the
long soak.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest

from tests.freeze import processes_frozen, server_engine
from tests.reliability.conftest import metric, tree_rss_bytes

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


def _rejections(url: str, reason: str) -> float:
    text = httpx.get(url + "/metrics", timeout=120).text
    match = re.search(rf'^endorm_rejections_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


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
    timeouts_before = _rejections(url, "wait_timeout")
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
                while _rejections(url, "wait_timeout") - timeouts_before < 32:
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
    url = limited_server.url
    _settle(url)
    before = tree_rss_bytes(limited_server.proc.pid)
    for round_ in range(3):

        def hang_up(i):
            try:
                httpx.post(url + "/score", json=_body(round_ * 100 + i, items=8), timeout=0.05)  # noqa: B023 (called within this iteration)
            except httpx.TimeoutException:
                pass

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(hang_up, range(64)))
        _settle(url)
    assert metric(url, "endorm_in_flight_requests") == 0
    assert metric(url, "endorm_waiting_requests") == 0
    after = tree_rss_bytes(limited_server.proc.pid)
    assert after < before * 1.10 + 50 * MB, (before / MB, after / MB)
    assert httpx.post(url + "/score", json=_body(1), timeout=300).status_code == 200  # not httpx's default 5 s


def _soak(server, seconds: float) -> None:
    """Steady load; after a warm-up, the API process's memory has no upward trend and the
    engine processes' memory stays near its level (their allocator grows with new shapes first)."""
    url = server.url
    body = lambda n: _body(n, items=2, prompt_len=120)  # noqa: E731
    _drive(url, min(20.0, seconds / 2), 4, body)  # warm-up: same shapes, not sampled
    api = psutil.Process(server.proc.pid)
    samples: list[tuple[float, int, int]] = []
    done = threading.Event()

    def sample():
        t0 = time.monotonic()
        while not done.is_set():
            samples.append((time.monotonic() - t0, api.memory_info().rss, tree_rss_bytes(server.proc.pid)))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    results = _drive(url, seconds, 4, body)
    done.set()
    sampler.join()
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429}, set(map(str, statuses))
    t = np.array([x[0] for x in samples])
    api_mb = np.array([x[1] for x in samples]) / MB
    tree_mb = np.array([x[2] for x in samples]) / MB
    slope = np.polyfit(t, api_mb, 1)[0] * 60  # MB per minute
    print(
        f"\nsoak {seconds:.0f} s: {len(results)} requests; API process {api_mb[0]:.0f} -> {api_mb[-1]:.0f} MB "
        f"(trend {slope:+.2f} MB/min); all processes {tree_mb[0]:.0f} -> {tree_mb[-1]:.0f} MB"
    )
    assert slope < 5, f"API process memory grows {slope:.1f} MB/min"
    assert tree_mb[-1] < tree_mb[0] * 1.05 + 50


def test_soak_short(limited_server):
    _soak(limited_server, float(os.environ.get("ENDORM_SOAK_S", 20)))


@pytest.mark.slow
def test_soak_long(limited_server):
    _soak(limited_server, float(os.environ.get("ENDORM_SOAK_LONG_S", 300)))
