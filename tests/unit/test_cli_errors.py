"""Bad settings are one argparse-style error line and exit status 2, never a pydantic dump (issue 19)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _endorm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "endorm_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (
            ["serve", "--port", "x"],
            None,
            "endorm serve: error: --port (or ENDORM_PORT): Input should be a valid integer",
        ),
        (
            ["serve", "--alpha", "-1"],
            None,
            "endorm serve: error: --alpha (or ENDORM_ALPHA): Input should be greater than 0",
        ),
        (["serve"], {"ENDORM_MAX_INFLIGHT_TOKENS": "lots"}, "endorm serve: error: --max-inflight-tokens"),
        (
            ["score", "in.jsonl", "-o", "out.jsonl", "--max-model-len", "1"],
            None,
            "endorm score: error: --max-model-len (or ENDORM_MAX_MODEL_LEN): Input should be greater than 1",
        ),
        (["eval", "in.jsonl", "--engine", "onnx"], None, "endorm eval: error: --engine (or ENDORM_ENGINE):"),
    ],
)
def test_bad_setting_is_one_error_line(args, env, expected):
    proc = _endorm(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert "validation error" not in proc.stderr and "Traceback" not in proc.stderr
