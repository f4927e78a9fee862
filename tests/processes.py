"""Stopping the helper processes tests start (Prometheus, HAProxy): TERM, then KILL if it lingers."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen | None, grace_s: float = 30) -> None:
    """Terminate ``proc`` if it still runs and wait for it; kill it after ``grace_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
