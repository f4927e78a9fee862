"""Locust smoke runs: behaviour only (exit code, reports, counts), never speed.

locust is run as a subprocess: importing it here would monkey-patch this
process with gevent.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import API_KEY

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"

# Small, fast payloads for the tiny test model (max_model_len 512, at most 64 items).
SMALL_MIX = {
    "ENDORM_LT_PROMPT_TOKENS": "lognormal:48:0.6:4:256",
    "ENDORM_LT_RESPONSE_TOKENS": "lognormal:24:0.6:2:128",
    "ENDORM_LT_BATCH": "choice:1,2,4",
    "ENDORM_LT_COMPARE_N": "choice:2,3",
    "ENDORM_LT_RETURN_TOKENS": "0.5",
    "ENDORM_LT_INPUT": "mixed",
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENDORM_LT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _stats_rows(prefix: Path) -> list[dict]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_runner_smoke_against_the_live_server(server, tmp_path):
    """`python -m loadtests.run --url ...`: a run of 4 users x 3 requests, reports written, no failures.

    A fixed number of requests, not a time window: locust's run time counts from its own start, so
    a slow machine got fewer requests (none at all, seen here) in a few seconds."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.run",
            "--url",
            server.url,
            "--api-key",
            API_KEY,
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "300s",
            "--out",
            str(out),
            "--max-fail-ratio",
            "0",
            "--max-p99-ms",
            "none",
        ],
        # -t and the runner's own bound (run time + 90 s) only catch a hang
        cwd=ROOT,
        env=_env(**SMALL_MIX, ENDORM_LT_ITERATIONS="3"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "result    PASS" in proc.stderr
    rows = _stats_rows(out / "run")
    total = next(r for r in rows if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) == 12  # the final numbers, not locust's last once-a-second write
    for r in rows:  # no errors; 429/503 (if any) are reported under their own request type
        if r["Type"] not in ("REJECTED", ""):
            assert int(r["Failure Count"]) == 0, r
    # 4 users, each 3 requests from its own place in the 3:1 cycle: 9 /score and 3 /compare
    counts = {r["Name"]: int(r["Request Count"]) for r in rows}
    assert counts["/score"] + counts.get("/score 429", 0) + counts.get("/score 503", 0) == 9, counts
    assert counts["/compare"] + counts.get("/compare 429", 0) + counts.get("/compare 503", 0) == 3, counts
    assert (out / "run.html").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] + summary["rejected"] == 12
    assert summary["requests"] > 0 and summary["failures"] == 0 and summary["violations"] == []
    assert summary["tokens_per_s"] > 0
    logged = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert any(rec.get("event") == "test_start" for rec in logged)
    assert sum(1 for rec in logged if rec.get("event") == "request") >= summary["requests"]
    # the last stdout line is the one-line JSON summary
    assert json.loads(proc.stdout.strip().splitlines()[-1])["requests"] == summary["requests"]


class _Overloaded(BaseHTTPRequestHandler):
    """/score answers 200, 429, 503 in turn (with Retry-After): any 3 /score requests in a row get
    one of each; /compare 500 when asked."""

    counter = 0
    lock = threading.Lock()

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(
            200, {"data": [{"id": "fake", "max_model_len": 256, "vocab_size": 1000, "alpha": 1.0, "engine": "fake"}]}
        )

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/compare":
            n = len(body.get("responses_ids") or body.get("responses"))
            if self.server.fail_compare:
                return self._send(500, {"error": {"type": "internal", "message": "boom"}})
            return self._send(200, {"results": [{}] * n, "ranking": list(range(n))[::-1]})
        with self.lock:
            type(self).counter += 1
            k = self.counter % 3
        if k == 1:
            return self._send(429, {"error": {"type": "overloaded"}}, {"Retry-After": "0"})
        if k == 2:
            return self._send(503, {"error": {"type": "draining"}}, {"Retry-After": "0"})
        self._send(200, {"results": [{}] * len(body["items"])})


@pytest.fixture()
def fake_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Overloaded)
    httpd.fail_compare = False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _locust(url: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """4 users x 3 requests (not a time window, whose count depends on speed): 9 /score, 3 /compare;
    -t only bounds a hang."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--host",
            url,
            "--headless",
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "300s",
            "--csv",
            str(out),
            "--only-summary",
            "--stop-timeout",
            "60",
        ],
        cwd=ROOT,
        env={**env, "ENDORM_LT_ITERATIONS": "3"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_429_and_503_are_counted_apart_from_failures(fake_server, tmp_path):
    url = f"http://127.0.0.1:{fake_server.server_address[1]}"
    summary_path = tmp_path / "summary.json"
    env = _env(
        **SMALL_MIX,
        ENDORM_LT_WAIT="constant:0.05",
        ENDORM_LT_SUMMARY_JSON=str(summary_path),
        ENDORM_LT_MAX_FAIL_RATIO="0",
    )
    proc = _locust(url, tmp_path / "ok", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    # 9 /score in a row get 200, 429, 503 three times each; the 3 /compare get 200
    assert summary["failures"] == 0 and summary["requests"] == 6
    assert summary["rejected_429"] == 3 and summary["rejected_503"] == 3
    rows = {(r["Type"], r["Name"]): r for r in _stats_rows(tmp_path / "ok")}
    assert int(rows[("REJECTED", "/score 429")]["Request Count"]) == 3
    assert int(rows[("REJECTED", "/score 503")]["Request Count"]) == 3
    assert int(rows[("POST", "/score")]["Request Count"]) == 3 and int(rows[("POST", "/score")]["Failure Count"]) == 0

    # a threshold on the 429/503 share fails the run (exit code 1) and says why
    env["ENDORM_LT_MAX_REJECT_RATIO"] = "0.1"
    proc = _locust(url, tmp_path / "strict", env)
    assert proc.returncode == 1
    assert "THRESHOLD FAILED: 429/503 ratio" in proc.stderr


def test_errors_fail_the_run(fake_server, tmp_path):
    fake_server.fail_compare = True
    url = f"http://127.0.0.1:{fake_server.server_address[1]}"
    env = _env(
        **SMALL_MIX,
        ENDORM_LT_WAIT="constant:0.05",
        ENDORM_LT_SCORE_WEIGHT="0",
        ENDORM_LT_SUMMARY_JSON=str(tmp_path / "summary.json"),
    )
    proc = _locust(url, tmp_path / "err", env)
    assert proc.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failures"] == summary["requests"] == 12
    assert any("failure ratio" in v for v in summary["violations"])
