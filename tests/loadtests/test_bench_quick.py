"""The benchmark harness end to end on a 2-layer model (a few minutes: slow, run with -m slow).

Checks that every phase runs and writes its files; the numbers of a --quick run mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_bench_writes_the_report(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--quick",
            "--out",
            str(tmp_path),
            "--machine",
            "testbox",
            "--py-spy",
            "4",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [js] = tmp_path.glob("*-testbox.json")
    res = json.loads(js.read_text())
    keys = {r["key"] for r in res["ratios"]}
    assert {"service_overhead", "vs_stock0", "vs_stockfull", "vs_naive", "plugin_mem_growth"} <= keys
    assert max(res["checks"].values()) < 1e-3  # the routes compute the same numbers
    assert res["latency"]["steps"] and res["memory"]["plugin"] and res["memory"]["naive"]
    for kind in ("throughput", "memory", "latency"):
        assert (tmp_path / f"{js.stem}-{kind}.png").stat().st_size > 10_000
    # a verdict per target is written; whether a --quick run meets one depends on the machine, not on the code
    md = (tmp_path / f"{js.stem}.md").read_text()
    assert md.count("| yes |") + md.count("| **no** |") >= 1


@pytest.mark.slow
def test_quick_ceiling_phase_compares_bindings_against_the_ceiling(tmp_path):
    """--only ceiling: one plugin engine per binding and the plain torch forward, side by side."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench",
            "--quick",
            "--only",
            "ceiling",
            "--out",
            str(tmp_path),
            "--machine",
            "testbox",
            "--bindings",
            "vllm-auto,all",
            "--rounds",
            "2",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [js] = tmp_path.glob("*-testbox.json")
    res = json.loads(js.read_text())
    keys = {r["key"] for r in res["ratios"]}
    assert {"ceiling_vllm-auto", "ceiling_all", "binding_all_vs_auto"} <= keys
    assert [set(r) for r in res["ceiling"]["rounds"]] == [{"ceiling", "plugin[vllm-auto]", "plugin[all]"}] * 2
    assert max(res["ceiling_checks"].values()) < 1e-3  # the plugin computes from the same logits
    assert "Plugin vs the machine's ceiling" in (tmp_path / f"{js.stem}.md").read_text()
