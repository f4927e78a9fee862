"""A real HAProxy (Debian's) in front of ``endorm serve`` replicas on 127.0.0.1, driven and read
through its runtime API (a Unix socket): which servers are UP is asked, never waited for by time."""

from __future__ import annotations

import csv
import io
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from endorm_client.affinity import AFFINITY_HEADER
from tests.processes import stop_process
from tests.server import free_port
from tests.tools import require_tool

SERVED_BY = "X-Served-By"  # HAProxy adds the server's name to every response

CONFIG = """\
global
    stats socket {sock} mode 600 level admin
    maxconn 512

defaults
    mode http
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    # A request whose server died under it (connection refused or closed without an answer) is
    # sent again, to another server (redispatch); the SDK's retries cover the rest.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 503

# Prompt affinity: consistent hashing on the SDK's header, so a replica going away moves only
# its own keys and takes them back when it returns.
frontend affinity
    bind 127.0.0.1:{affinity_port}
    default_backend by_prompt

backend by_prompt
    balance hdr({header})
    hash-type consistent
    option httpchk GET /ready
    http-check expect status 200
    http-response set-header {served_by} %s
{servers}

# The same replicas balanced the way a plain Service does (per request, no affinity).
frontend rr
    bind 127.0.0.1:{rr_port}
    default_backend round_robin

backend round_robin
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    http-response set-header {served_by} %s
{servers}
"""


def require_haproxy() -> str:
    return require_tool("haproxy", candidates=["/usr/sbin/haproxy"])


@dataclass
class HAProxy:
    """One haproxy process with two frontends (affinity, round-robin) over the same replicas."""

    exe: str
    workdir: Path
    replicas: dict[str, int]  # server name -> port on 127.0.0.1
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.sock = self.workdir / "haproxy.sock"
        self.affinity_port, self.rr_port = free_port(), free_port()
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{port} check inter 300ms fall 2 rise 1"
            for name, port in self.replicas.items()
        )
        self.config = self.workdir / "haproxy.cfg"
        self.config.write_text(
            CONFIG.format(
                sock=self.sock,
                served_by=SERVED_BY,
                header=AFFINITY_HEADER,
                affinity_port=self.affinity_port,
                rr_port=self.rr_port,
                servers=servers,
            )
        )

    @property
    def affinity_url(self) -> str:
        return f"http://127.0.0.1:{self.affinity_port}"

    @property
    def rr_url(self) -> str:
        return f"http://127.0.0.1:{self.rr_port}"

    def start(self) -> HAProxy:
        check = subprocess.run([self.exe, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(self.workdir / "haproxy.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.exe, "-db", "-f", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while not self.sock.exists():
            assert self.proc.poll() is None, (self.workdir / "haproxy.log").read_text()
            assert time.monotonic() < deadline, "haproxy did not open its runtime socket"
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc is not None:
            self.log.close()

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.sock))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self, backend: str) -> dict[str, str]:
        """Server name -> UP / DOWN / ... as HAProxy's health checks see it now."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            r["svname"]: r["status"].split()[0]
            for r in rows
            if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_status(self, backend: str, want: dict[str, str], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            now = self.status(backend)
            if all(now.get(k) == v for k, v in want.items()):
                return
            assert time.monotonic() < deadline, f"{backend}: {now}, waiting for {want}"
            time.sleep(0.2)
