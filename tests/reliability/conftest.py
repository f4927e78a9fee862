from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable

import httpx
import psutil

PATIENCE_S = 120  # a deadline for states that must come; only reached when something is broken


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=PATIENCE_S).text  # polled under load: a guard, not a speed check
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of the server and its engine processes."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def rejections(url: str, reason: str) -> float:
    """``endorm_rejections_total{reason=...}`` (turned away to retry: 429/503)."""
    return _labelled(url, "endorm_rejections_total", "reason", reason)


def request_errors(url: str, code: str) -> float:
    """``endorm_request_errors_total{code=...}`` (failed: 4xx/5xx, 499 for a client that hung up)."""
    return _labelled(url, "endorm_request_errors_total", "code", code)


def _labelled(url: str, name: str, label: str, value: str) -> float:
    text = httpx.get(url + "/metrics", timeout=PATIENCE_S).text
    match = re.search(rf'^{name}\{{{label}="{value}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def wait_for(state: Callable[[], object], what: str, timeout_s: float = PATIENCE_S) -> None:
    """Poll until ``state()`` holds: it must come, so the deadline is only a guard against a hang."""
    deadline = time.monotonic() + timeout_s
    while not state():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.02)


def open_score_request(port: int, body: dict, api_key: str | None = None) -> socket.socket:
    """Send a whole POST /score on a raw socket and leave it open: the test hangs up when it decides."""
    data = json.dumps(body).encode()
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (
        f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    sock.sendall(head + data)
    return sock
