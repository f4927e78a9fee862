"""The engine process dies under load: clear 503s, /ready 503, exit status 1."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

from tests.conftest import COMMON, tiny_model
from tests.server import ServerProcess


def test_engine_death_under_load(tmp_path):
    server = ServerProcess(["--model", str(tiny_model("llama")), *COMMON], log_path=tmp_path / "server.log").start()
    try:
        body = {"items": [{"prompt_ids": [(i + j) % 500 + 5 for j in range(480)], "response_ids": [7, 8]} for i in range(64)]}

        def post(_):
            start = time.monotonic()
            try:
                r = httpx.post(server.url + "/score", json=body, timeout=60)
                return r.status_code, r.headers.get("retry-after"), time.monotonic() - start
            except httpx.TransportError as exc:
                return type(exc).__name__, None, time.monotonic() - start

        pool = ThreadPoolExecutor(6)
        futures = [pool.submit(post, i) for i in range(6)]
        time.sleep(0.5)
        children = psutil.Process(server.proc.pid).children(recursive=True)
        assert children, "no engine process to kill"
        for child in children:  # the EngineCore process and its workers
            child.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        ready, late = None, None
        while time.monotonic() - killed_at < 10:
            try:
                ready = httpx.get(server.url + "/ready", timeout=2)
                if ready.status_code == 503:
                    late = httpx.post(server.url + "/score", json={"items": [{"prompt": "a", "response": "b"}]}, timeout=5)
                    break
            except httpx.TransportError:
                break
            time.sleep(0.1)
        results = [f.result(timeout=30) for f in futures]
        pool.shutdown()
        exit_code = server.wait(timeout=30)
    finally:
        server.stop()

    assert ready is not None and ready.status_code == 503, "ready did not turn 503 after the engine died"
    assert ready.json()["status"] == "engine_dead"
    assert late is not None and late.status_code == 503 and late.headers.get("retry-after")
    # every in-flight request ended promptly: done before the kill (200) or a clear 503
    for status, retry_after, elapsed in results:
        assert status in (200, 503), results
        if status == 503:
            assert retry_after is not None
        assert elapsed < 30
    assert 503 in [r[0] for r in results], results
    assert exit_code == 1, server.log_tail()
