"""``endorm batch`` runs as users run it: the CLI in a subprocess, the tiny llama with the test engine
settings of the shared ``server`` fixture (so answers can be compared with it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import API_KEY, COMMON, tiny_model

RUN_TIMEOUT_S = 900  # a guard against a hang, far past a run on a loaded 2-core machine


def batch_cmd(input_path: Path, output: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "endorm_server.cli",
        "batch",
        str(input_path),
        "-o",
        str(output),
        "--model",
        str(tiny_model("llama")),
        *COMMON,
        *flags,
    ]


def fleet(server) -> list[str]:
    """``endorm batch`` on the shared ``server`` fixture over HTTP (the SDK): no engine start of its own,
    for the tests of what does not depend on where a request is scored (resume, the Parquet file)."""
    return ["--endpoint", server.url, "--endpoint-api-key", API_KEY]


def run_batch(input_path: Path, output: Path, *flags: str) -> subprocess.CompletedProcess:
    """Run ``endorm batch`` to completion; its stderr is in the result (the progress lines)."""
    proc = subprocess.run(batch_cmd(input_path, output, *flags), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def start_batch(input_path: Path, output: Path, log: Path, *flags: str) -> subprocess.Popen:
    """``endorm batch`` in a session of its own (so a kill reaches its engine process too)."""
    with open(log, "wb") as f:
        return subprocess.Popen(
            batch_cmd(input_path, output, *flags), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)


def request(custom_id: str, url: str, body: object, method: str = "POST") -> str:
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


def score_line(custom_id: str, prompt: str, response: str, **options: object) -> str:
    return request(custom_id, "/score", {"items": [{"prompt": prompt, "response": response}], **options})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
