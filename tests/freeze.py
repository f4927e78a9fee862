"""Freeze processes for a block: the tests' way to decide outcomes by control, not by speed."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psutil


@contextmanager
def processes_frozen(procs: Sequence[psutil.Process]) -> Iterator[None]:
    """SIGSTOP ``procs`` for the body (SIGCONT after): work they were given cannot finish meanwhile."""
    assert procs, "no engine process"
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)


def server_engine(server) -> list[psutil.Process]:
    """The engine processes (EngineCore and its workers) of an ``endorm serve`` process."""
    return psutil.Process(server.proc.pid).children(recursive=True)
