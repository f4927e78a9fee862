"""``endorm eval`` end to end: in process (transformers engine, fast) and through a live server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from endorm_server.cli import main
from endorm_server.evaluation.harness import evaluate, read_preferences
from tests.conftest import API_KEY, MODEL_CACHE, tiny_model

RMB_ROWS = [
    {
        "prompt": "What is 2+2?",
        "chosen": ["4", "2+2=4", "The answer is 4."],
        "rejected": ["5", "2+2=5", "The answer is 5."],
        "domain": "math",
    },
    {
        "prompt": "Name a color.",
        "chosen": ["red", "Red is a color.", "A color: red."],
        "rejected": ["dog", "Dog is a color.", "A color: dog."],
        "domain": "chat",
    },
    {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": ["hi", "Hi there.", "Hello!"],
        "rejected": ["no", "No.", "Go away."],
        "domain": "chat",
        "system": "Be kind.",
    },
]
RB_ROWS = [
    {"prompt": "What is 3+4?", "chosen": "7", "rejected": "8", "subset": "math"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "subset": "facts"},
    {"prompt": "Greet me.", "chosen": "Hello!", "rejected": "Bye.", "subset": "chat"},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_report(out_dir, name, aggregations):
    md = (out_dir / f"{name}.md").read_text()
    data = json.loads((out_dir / f"{name}.json").read_text())
    assert (out_dir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert set(data["results"]) == set(aggregations)
    ds = read_preferences(data["input"])
    for agg in aggregations:
        # the reported accuracies follow from the saved scores by the harness arithmetic
        s = data["scores"][agg]
        again = evaluate(ds, s["chosen"], s["rejected"], aggregation=agg)
        assert data["results"][agg]["overall"]["accuracy"] == pytest.approx(again.overall.accuracy)
        assert [g["accuracy"] for g in data["results"][agg]["groups"]] == pytest.approx(
            [g.accuracy for g in again.groups]
        )
        assert f"| {agg}" in md or agg in md
    return data


def test_eval_in_process_rm_bench_and_rewardbench(tmp_path, capsys):
    model = str(tiny_model("llama"))
    common = [
        "--engine",
        "transformers",
        "--model",
        model,
        "--dtype",
        "float32",
        "--cache-dir",
        str(MODEL_CACHE),
        "--no-progress",
        "-o",
        str(tmp_path / "out"),
    ]
    rmb = write(tmp_path / "rmb.jsonl", RMB_ROWS)
    assert (
        main(
            [
                "eval",
                str(rmb),
                *common,
                "--aggregation",
                "sum",
                "--aggregation",
                "loglik_sum",
                "--aggregation",
                "loglik_mean",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "easy" in printed and "hard" in printed and "rmb.md" in printed
    data = check_report(tmp_path / "out", "rmb", ["sum", "loglik_sum", "loglik_mean"])
    assert data["format"] == "rm-bench" and data["k"] == 3 and data["rows"] == 3
    assert [g["name"] for g in data["results"]["sum"]["groups"]] == ["math", "chat"]
    assert np.asarray(data["results"]["sum"]["overall"]["matrix"]).shape == (3, 3)
    # terminal 0, alpha 1: sum_h r_h = sum_h log pi + V(s_0), the same V(s_0) for every response of a row
    s, ll = data["scores"]["sum"], data["scores"]["loglik_sum"]
    for n in range(3):
        diff = np.subtract(s["chosen"][n] + s["rejected"][n], ll["chosen"][n] + ll["rejected"][n])
        np.testing.assert_allclose(diff, diff[0], atol=1e-6)

    rb = write(tmp_path / "rb.jsonl", RB_ROWS)
    assert main(["eval", str(rb), *common, "--name", "rb-criteria", "--system", "Be precise."]) == 0
    data = check_report(tmp_path / "out", "rb-criteria", ["sum"])
    assert data["format"] == "rewardbench" and data["k"] == 1 and data["system"] == "Be precise."
    assert {g["name"] for g in data["results"]["sum"]["groups"]} == {"math", "facts", "chat"}


def test_eval_bad_input_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": ["a", "b"], "rejected": ["c"], "domain": "d"}) + "\n")
    assert main(["eval", str(bad), "--engine", "transformers", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "endorm eval: error:" in err and "bad.jsonl:1" in err and "Traceback" not in err
    assert main(["eval", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path)]) == 2
    assert "No such file" in capsys.readouterr().err


def test_eval_through_a_running_server(server, tmp_path):
    """--server: scores come from POST /score; they match the in-process reference."""
    rb = write(tmp_path / "rb.jsonl", RB_ROWS)
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                str(rb),
                "--server",
                server.url,
                "--api-key",
                API_KEY,
                "--no-progress",
                "-o",
                str(out),
                "--aggregation",
                "sum",
                "--aggregation",
                "loglik_mean",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    remote = check_report(out, "rb", ["sum", "loglik_mean"])
    assert remote["backend"].startswith("server")
    assert (
        main(
            [
                "eval",
                str(rb),
                "--engine",
                "transformers",
                "--model",
                str(tiny_model("llama")),
                "--no-progress",
                "-o",
                str(out),
                "--name",
                "local",
                "--aggregation",
                "sum",
                "--aggregation",
                "loglik_mean",
            ]
        )
        == 0
    )
    local = json.loads((out / "local.json").read_text())
    for agg in ("sum", "loglik_mean"):
        for side in ("chosen", "rejected"):
            np.testing.assert_allclose(remote["scores"][agg][side], local["scores"][agg][side], atol=2e-3)


def test_eval_server_errors_are_reported(server, tmp_path, capsys):
    rb = write(tmp_path / "rb.jsonl", RB_ROWS)
    assert (
        main(["eval", str(rb), "--server", server.url, "--api-key", "wrong-key", "--no-progress", "-o", str(tmp_path)])
        == 2
    )
    assert "401" in capsys.readouterr().err
