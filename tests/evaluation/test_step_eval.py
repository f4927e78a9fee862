"""``endorm eval`` and ``endorm score`` with steps (--step-separator, step_min / step_last)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from endorm_server.cli import main
from tests.conftest import API_KEY, MODEL_CACHE, tiny_model

ROWS = [
    {
        "prompt": "What is 2*(2+3)?",
        "chosen": "2+3 = 5.\n\n2*5 = 10.\n\nAnswer: 10",
        "rejected": "2+3 = 6.\n\n2*6 = 12.\n\nAnswer: 12",
        "subset": "math",
    },
    {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "A dog.\n\nIt barks.", "subset": "chat"},
]
LOCAL = [
    "--engine",
    "transformers",
    "--model",
    str(tiny_model("llama")),
    "--dtype",
    "float64",
    "--cache-dir",
    str(MODEL_CACHE),
    "--no-progress",
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_step_aggregations_in_process_and_through_the_server(server, tmp_path):
    data = write(tmp_path / "steps.jsonl", ROWS)
    aggs = ["--aggregation", "sum", "--aggregation", "step_min", "--aggregation", "step_last"]
    assert (
        main(["eval", str(data), *LOCAL, "-o", str(tmp_path), "--name", "local", "--step-separator", "\\n\\n", *aggs])
        == 0
    )
    assert (
        main(
            [
                "eval",
                str(data),
                "--server",
                server.url,
                "--api-key",
                API_KEY,
                "--no-progress",
                "-o",
                str(tmp_path),
                "--name",
                "remote",
                "--step-separator",
                "\\n\\n",
                *aggs,
            ]
        )
        == 0
    )
    assert main(["eval", str(data), *LOCAL, "-o", str(tmp_path), "--name", "plain"]) == 0
    local, remote, plain = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("local", "remote", "plain"))
    assert local["step_separator"] == "\n\n"
    for side in ("chosen", "rejected"):
        # steps cut the same tokens: the sequence sum does not change
        np.testing.assert_allclose(local["scores"]["sum"][side], plain["scores"]["sum"][side], atol=1e-9)
        for agg in ("sum", "step_min", "step_last"):
            np.testing.assert_allclose(remote["scores"][agg][side], local["scores"][agg][side], atol=2e-3)
    # one-step answers ("Red."): step_min = step_last = sum
    assert local["scores"]["step_min"]["chosen"][1] == pytest.approx(local["scores"]["sum"]["chosen"][1])


def test_eval_step_aggregation_needs_a_separator(tmp_path, capsys):
    data = write(tmp_path / "steps.jsonl", ROWS)
    assert main(["eval", str(data), *LOCAL, "-o", str(tmp_path), "--aggregation", "step_min"]) == 2
    assert "--step-separator" in capsys.readouterr().err


def test_score_command_with_steps(tmp_path, capsys):
    pairs = write(tmp_path / "pairs.jsonl", [{k: v for k, v in r.items() if k != "subset"} for r in ROWS])
    out = tmp_path / "scored.jsonl"
    assert (
        main(
            [
                "score",
                str(pairs),
                "-o",
                str(out),
                "--aggregation",
                "step_min",
                "--step-separator",
                "\\n\\n",
                *[a for a in LOCAL if a != "--no-progress"],
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["chosen_steps"]) for r in rows] == [3, 1] and [len(r["rejected_steps"]) for r in rows] == [3, 2]
    for r in rows:
        assert r["chosen_score"] == pytest.approx(min(r["chosen_steps"]))
        assert r["rejected_score"] == pytest.approx(min(r["rejected_steps"]))
