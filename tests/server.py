"""Start a real ``endorm serve`` process on 127.0.0.1 and wait until it is ready.

The launcher itself is the load tests' (``loadtests/server.py``); this keeps the
tests' one-call form: ``ServerProcess(args, log_path=...).start()`` returns when ready.
Ready within 600 s (a guard against a hang: on a 2-core machine loaded with other engines,
a start took over 300 s here).
"""

from __future__ import annotations

from pathlib import Path

from loadtests.server import LocalServer, free_port

__all__ = ["ServerProcess", "free_port"]


class ServerProcess(LocalServer):
    def __init__(
        self, args: list[str], *, log_path: Path, env: dict[str, str] | None = None, ready_timeout: float = 600
    ) -> None:
        super().__init__(args, log_path=log_path, env=env, ready_timeout_s=ready_timeout)

    def start(self) -> ServerProcess:
        super().start()
        self.wait_ready()
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)
