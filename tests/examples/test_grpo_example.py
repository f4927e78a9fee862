"""The GRPO example (examples/grpo_endogenous) end to end, in miniature: two arms, two
steps each, against a live ``endorm serve`` of the demo model (the reward model), with
the report written at the end. The full run is not a test (about half an hour); this
checks that the script runs and that its rewards are the server's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from endorm_server.evaluation.demo_task import STYLES, response, sample_problem
from endorm_server.models.sources import DEMO_MODEL_DIR
from tests.clients.conftest import metric
from tests.conftest import API_KEY, COMMON
from tests.server import ServerProcess

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "grpo_endogenous"
sys.path.insert(0, str(EXAMPLE))

from task import extract_answer, is_correct  # noqa: E402


def test_exact_match_checker():
    """Every style's right answer is right for its prompt style (and for none); a changed value never is."""
    import random

    rng = random.Random(3)
    for _ in range(50):
        p = sample_problem(rng, heldout=True)
        for style in STYLES:
            assert is_correct(response(p, style), p.value, style)
            assert is_correct(response(p, style), p.value, "none")
            assert not is_correct(response(p, style, p.value + 1), p.value, style)
        assert not is_correct(response(p, "words"), p.value, "digits")
        assert not is_correct(response(p, "digits_working"), p.value, "words_working")
    assert extract_answer("20 + 40 = 60 and 3 + 8 = 11, so 23 + 48 = 60 + 11, which is seventy-one.") == "seventy-one"
    assert extract_answer(" 71 ") == "71"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The reward model: the demo model, frozen, behind a real server with auth."""
    proc = ServerProcess(
        ["--model", str(DEMO_MODEL_DIR), *COMMON, "--api-key", API_KEY, "--max-items-per-request", "64"],
        log_path=tmp_path_factory.mktemp("demo-server") / "server.log",
        ready_timeout=900,
    ).start()  # a generous deadline: a busy machine starts vLLM slowly
    yield proc
    proc.stop()


@pytest.mark.timeout(1800)  # a hang guard only: the server start counts against it, and a busy machine is slow
def test_grpo_example_runs_end_to_end(demo_server, tmp_path):
    out = tmp_path / "rl"
    ok_before = metric(demo_server.url, "endorm_requests_total", endpoint="/score", status="200")
    cmd = [
        sys.executable,
        str(EXAMPLE / "train.py"),
        "--server-url",
        demo_server.url,
        "--out",
        str(out),
        "--arms",
        "endorm-sum",
        "random",
        "--seeds",
        "0",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--prompts-per-step",
        "2",
        "--num-generations",
        "4",
        "--eval-per-style",
        "1",
        "--eval-samples",
        "2",
    ]
    env = {**os.environ, "ENDORM_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    runs = {arm: json.loads((out / "runs" / f"{arm}-s0.json").read_text()) for arm in ("endorm-sum", "random")}
    for arm, run in runs.items():
        assert [e["step"] for e in run["log"]] == [1, 2], arm
        assert [e["step"] for e in run["evals"]] == [0, 2], arm
        assert all(0.0 <= e["greedy"] <= 1.0 and 0.0 <= e["sampled"] <= 1.0 for e in run["evals"])
        # every arm logs the endogenous reward of its samples (weight 0 unless it is the arm's own)
        assert all("rewards/endorm_sum/mean" in e and "rewards/exact_match/mean" in e for e in run["log"])
    # the endorm-sum arm trains on exactly the server's reward; the random arm does not
    assert all(e["reward"] == pytest.approx(e["rewards/endorm_sum/mean"], abs=1e-4) for e in runs["endorm-sum"]["log"])
    assert all(
        "rewards/random_reward/mean" in e and e["reward"] == pytest.approx(e["rewards/random_reward/mean"], abs=1e-6)
        for e in runs["random"]["log"]
    )
    # one /score request per step and run (8 completions each), all answered
    assert metric(demo_server.url, "endorm_requests_total", endpoint="/score", status="200") - ok_before == 4

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"endorm-sum", "random"}
    assert summary["arms"]["random"]["greedy"]["before"] == runs["random"]["evals"][0]["greedy"]
    for name in ("README.md", "training_curve.png", "monitors.png", "accuracy_curve.png", "meta.json"):
        assert (out / name).stat().st_size > 0, name
    assert "endorm-sum" in (out / "README.md").read_text()
