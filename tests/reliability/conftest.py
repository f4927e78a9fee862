from __future__ import annotations

import re

import httpx
import psutil


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=120).text  # polled under load: a guard, not a speed check
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
