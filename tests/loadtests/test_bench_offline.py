"""The offline bench's pure parts, without an engine: it reads the numbers ``endorm batch`` prints, its
input files are valid batch lines, the ratios are taken within rounds, and the RSS-by-progress reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from endorm_server.batch.requests import BatchRequest, parse_line
from endorm_server.batch.runner import Summary
from loadtests.bench.offline import parse_summary, ratios, ray_env, rss_at_fractions, write_input, write_small_input


def test_reads_the_summary_endorm_batch_prints():
    s = Summary(Path("/tmp/x; 3 tokens in 9 s.jsonl"), 10, 2, 8, 1, 5000, 12.5, {"n1": 8}, 2.5, 500)
    got = parse_summary("vLLM noise\n" + s.describe() + "\n")
    assert (got["written"], got["errors"], got["tokens"], got["elapsed_s"]) == (8, 1, 5000, 12.5)
    assert (got["first_answer_s"], got["first_tokens"]) == (2.5, 500)
    assert got["tokens_per_s"] == pytest.approx(4500 / 10.0) and got["run_tokens_per_s"] == pytest.approx(400.0)
    assert "then 450 tokens/s" in s.describe()  # the same steady rate, as the user reads it
    plain = parse_summary(Summary(Path("o.jsonl"), None, 0, 3, 0, 300, 3.0).describe())
    assert plain["first_answer_s"] == 0.0 and plain["tokens_per_s"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        parse_summary("Traceback: engine died\n")


def test_inputs_are_batch_lines(tmp_path):
    write_input(tmp_path / "a.jsonl", 5, 3)
    write_small_input(tmp_path / "b.jsonl", 7)
    for name, rows, items in (("a.jsonl", 5, 3), ("b.jsonl", 7, 1)):
        lines = (tmp_path / name).read_text().splitlines()
        parsed = [parse_line(text, n) for n, text in enumerate(lines, 1)]
        assert len(parsed) == rows and all(isinstance(p, BatchRequest) and p.route == "/score" for p in parsed)
        assert len({p.custom_id for p in parsed}) == rows  # type: ignore[union-attr]
        assert all(len(json.loads(text)["body"]["items"]) == items for text in lines)


def test_ratios_within_rounds_then_the_median():
    def rnd(batch, http, r1, r2, batch_run=None):
        rates = {"batch": batch, "http-sdk": http, "ray-1": r1, "ray-2": r2}
        runs = {**{k: v / 2 for k, v in rates.items()}, "batch": (batch_run or batch) / 2}
        return {"routes": {k: {"tokens_per_s": v, "run_tokens_per_s": runs[k]} for k, v in rates.items()}}

    # round 2 ran on a busier machine: every rate halved, the within-round ratios unchanged
    got = ratios([rnd(120, 100, 90, 99), rnd(60, 50, 45, 49.5), rnd(130, 100, 100, 100, batch_run=90)])
    after = got["batch/http-sdk (after first answer)"]
    assert after["per_round"] == pytest.approx([1.2, 1.2, 1.3]) and after["median"] == pytest.approx(1.2)
    assert got["batch/http-sdk (whole run)"]["per_round"] == pytest.approx([1.2, 1.2, 0.9])
    assert got["ray-2/ray-1 (after first answer)"]["median"] == pytest.approx(1.1)
    assert got["ray-1/batch (after first answer)"]["per_round"] == pytest.approx([0.75, 0.75, 100 / 130])


def test_rss_by_fraction_of_the_output():
    MiB = 2**20
    flat = [(t, 500 * MiB, 900 * MiB, 10 * t) for t in range(1, 101)]
    assert set(rss_at_fractions(flat).values()) == {500.0}
    growing = [(t, (500 + t) * MiB, 0, 10 * t) for t in range(1, 101)]
    got = rss_at_fractions(growing)
    assert got["0.1"] == 510.0 and got["0.5"] == 550.0 and got["1"] == 600.0
    assert rss_at_fractions([(0.2, MiB, MiB, 0)]) == {}  # nothing written yet: no reading


def test_ray_engines_share_the_cores():
    assert ray_env(1, 2) == {}  # one actor: the default binding, every core
    assert ray_env(2, 2) == {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
    assert ray_env(4, 16)["OMP_NUM_THREADS"] == "4" and ray_env(3, 2)["OMP_NUM_THREADS"] == "1"
