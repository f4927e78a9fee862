"""One retry budget: the SDK and the gateway in front of the replicas retry together at most
``(SDK attempts) x (gateway retries + 1)`` times per call, the number docs/rl.md states.

Two replicas that answer every request 503 (draining), behind a real HAProxy that retries the way
the Envoy Gateway policy does (deploy/overlays/envoy-gateway/backendtrafficpolicy.yaml: its
``numRetries``, on 503 and connection failures, on another host), and the SDK with its default
retries: the replicas count every attempt. No engine is started."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from endorm_client import RewardClient, ServiceUnavailableError
from endorm_client._core import DEFAULT_MAX_RETRIES
from tests.processes import stop_process
from tests.replicas.haproxy import require_haproxy
from tests.server import free_port

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "deploy/overlays/envoy-gateway/backendtrafficpolicy.yaml"

CONFIG = """\
global
    maxconn 64

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s

frontend gateway
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    # as the Envoy Gateway policy: numRetries on another host, on 503 and connection failures
    retries {retries}
    option redispatch 1
    retry-on 503 conn-failure
    # a request is retried only when HAProxy still holds all of it (Envoy buffers a retried body too)
    option http-buffer-request
{servers}
"""


class Draining(ThreadingHTTPServer):
    daemon_threads = True
    attempts = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", "0")))
        with LOCK:
            self.server.attempts += 1  # type: ignore[attr-defined]
        body = b'{"error": {"type": "unavailable", "code": "draining", "message": "draining", "param": null}}'
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("retry-after", "0")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


LOCK = threading.Lock()


def gateway_retries() -> int:
    return int(yaml.safe_load(POLICY.read_text())["spec"]["retry"]["numRetries"])


def documented_worst_case() -> int:
    text = (ROOT / "docs/rl.md").read_text()
    m = re.search(r"at most \*\*(\d+) attempts\*\* per call", text)
    assert m, "docs/rl.md states the worst-case number of attempts per call"
    return int(m.group(1))


def test_sdk_and_gateway_retry_within_the_documented_budget(tmp_path):
    exe = require_haproxy()
    retries = gateway_retries()
    worst = (DEFAULT_MAX_RETRIES + 1) * (retries + 1)
    assert worst == documented_worst_case()
    replicas = [Draining(("127.0.0.1", 0), Handler) for _ in range(2)]
    for r in replicas:
        threading.Thread(target=r.serve_forever, daemon=True).start()
    port = free_port()
    servers = "\n".join(f"    server r{i} 127.0.0.1:{r.server_address[1]}" for i, r in enumerate(replicas))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG.format(port=port, retries=retries, servers=servers))
    check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp_path / "haproxy.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60  # until HAProxy listens (a connection refused would be retried too)
        while True:
            assert proc.poll() is None, (tmp_path / "haproxy.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "haproxy did not listen"
            time.sleep(0.05)
        # the SDK's defaults but short backoffs (the count, not the waits, is under test)
        with RewardClient(f"http://127.0.0.1:{port}", backoff_base=0.01, backoff_max=0.02) as rm:
            assert rm.retry.max_retries == DEFAULT_MAX_RETRIES
            with pytest.raises(ServiceUnavailableError):
                rm.score([{"prompt": "2+3=", "response": "5"}])
        assert sum(r.attempts for r in replicas) == worst
        assert all(r.attempts > 0 for r in replicas)  # the gateway's retries went to the other replica
    finally:
        stop_process(proc)
        log.close()
        for r in replicas:
            r.shutdown()
