"""The GRPO bench and the ceiling end to end on a 2-layer model at tiny sizes (slow: a server and two engines).

Checks the harness, not the speed: every route ran every round, the ratios in the report are the ones the
measured times give, and the last line has the promised form.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = [
    {
        "prompt": f"Question {i}: how do tides follow the moon, and why are there two a day?",
        "chosen": [f"Answer {i}: the moon's pull differs across the earth, raising two bulges. " * 3] * 3,
        "rejected": [f"Answer {i}: tides come from wind pushing water around the bays. " * 3] * 3,
    }
    for i in range(6)
]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1500,
    )


@pytest.mark.slow
def test_grpo_bench_reports_ratios_of_the_measured_times(tmp_path):
    from loadtests.bench.model import resolve

    model, _ = resolve("tiny")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    proc = _run(
        [
            "loadtests.bench.grpo",
            "--model",
            str(model),
            "--data",
            str(data),
            "--cells",
            "2x48x16",
            "--rounds",
            "2",
            "--kv-cache-gb",
            "0.1",
            "--enforce-eager",
            "--out",
            str(tmp_path),
            "--machine",
            "testbox",
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"endorm/stock-vllm \d+\.\d\dx", last), last
    [js] = tmp_path.glob("*-testbox-grpo.json")
    res = json.loads(js.read_text())
    [cell] = res["results"]
    assert [set(r) for r in cell["rounds"]] == [{"endorm-group", "endorm-single", "stock-vllm", "hf"}] * 2
    per_round = [t["stock-vllm"] / t["endorm-group"] for t in cell["rounds"]]
    got = res["summary"][0]["ratios"]["endorm-group/stock-vllm"]
    assert got == [sorted(per_round)[0] / 2 + sorted(per_round)[1] / 2, min(per_round), max(per_round)]
    assert last == f"endorm/stock-vllm {got[0]:.2f}x"
    assert "| 2 | 48 | 16 |" in (tmp_path / f"{js.stem}.md").read_text()


@pytest.mark.slow
def test_ceiling_measures_every_native_dtype(tmp_path):
    from loadtests.bench.peak import cpu_flags, native_dtypes

    proc = _run(["loadtests.bench.ceiling", "--reps", "2", "--out", str(tmp_path), "--machine", "testbox"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    [js] = tmp_path.glob("*-testbox-ceiling.json")
    res = json.loads(js.read_text())
    assert list(res["peak"]) == native_dtypes(cpu_flags())
    for dt, p in res["peak"].items():  # the peak is the best measured all-CPU rate of that dtype
        rows = [r for r in res["gemm"] if r["dtype"] == dt]
        assert p["gflops"] == max(r[f"gflops_{len(res['topology']['cpus'])}t"] for r in rows) > 0
    assert "Clock reached" in (tmp_path / f"{js.stem}.md").read_text() or "skipped" in res["clock_before"]
