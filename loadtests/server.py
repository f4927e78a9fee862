"""Start a local ``endorm serve`` process on 127.0.0.1 and wait until it is ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the server gets SIGTERM (and drains) if the process that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


PORT_TAKEN = "address already in use"  # uvicorn's log line when the port is bound by someone else


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``with LocalServer([...flags]) as srv: srv.url`` — a real server process, logs in ``log_path``."""

    def __init__(
        self,
        args: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 600,
        port: int | None = None,
        new_session: bool = True,
    ) -> None:
        """``new_session=False`` keeps the server in the caller's session: on Linux the scheduler shares CPU
        fairly between sessions (autogroups), so a benchmark comparing the server with engines run in-process
        must keep them all in one session."""
        self.args = list(args)
        self.own_port = port is None  # ours to replace if another process takes it first
        self._use_port(port or free_port())
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.new_session = new_session
        self.proc: subprocess.Popen | None = None
        self._log = None

    def _use_port(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.cmd = [
            sys.executable,
            "-m",
            "endorm_server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *self.args,
        ]

    def start(self) -> LocalServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:  # a restart on another port
            self._log.close()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=self.new_session,
            preexec_fn=_die_with_parent,
        )
        return self

    def wait_ready(self) -> LocalServer:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self.own_port and PORT_TAKEN in self.log_tail():
                    # free_port() only finds a port free *now*: another process (a second test suite,
                    # an engine's own sockets) can bind it before the server does. Take another one.
                    self._use_port(free_port())
                    self.start()
                    continue
                raise RuntimeError(f"server exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready in {self.ready_timeout_s} s; log tail:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout_s: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # drains, then exits
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._kill_tree()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _kill_tree(self) -> None:
        assert self.proc is not None
        if self.new_session:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return
        try:  # not our process group to kill: the server and its descendants only
            import psutil

            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
        except Exception:  # noqa: BLE001 - best effort; the server itself is killed below
            pass
        self.proc.kill()

    def __enter__(self) -> LocalServer:
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
