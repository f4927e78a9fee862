"""The accuracy arithmetic and the file readers of ``endorm eval``, on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from endorm_server.evaluation.harness import (
    accuracy_matrix,
    evaluate,
    is_correct,
    parse_rows,
    read_preferences,
    rm_bench_summary,
)
from endorm_server.evaluation.report import markdown, to_json, write_png
from endorm_server.evaluation.runner import build_items


def rmb_row(domain="chat", prompt="p", k=3):
    return {
        "prompt": prompt,
        "chosen": [f"c{i}" for i in range(k)],
        "rejected": [f"r{i}" for i in range(k)],
        "domain": domain,
    }


def rb_row(subset="s", prompt="p"):
    return {"prompt": prompt, "chosen": "good", "rejected": "bad", "subset": subset}


# ------------------------------------------------------------------ arithmetic


def test_ties_and_nan_are_wrong():
    assert is_correct(1.0, 0.0)
    assert not is_correct(0.0, 0.0)
    assert not is_correct(-1.0, 0.0)
    assert not is_correct(float("nan"), 0.0)
    assert not is_correct(1.0, float("nan"))


def test_accuracy_matrix_compares_chosen_i_with_rejected_j():
    # one row: chosen [3, 1, 2], rejected [2, 2, 0]
    m = accuracy_matrix([[3, 1, 2]], [[2, 2, 0]])
    expected = [
        [1, 1, 1],  # 3 > 2, 3 > 2, 3 > 0
        [0, 0, 1],  # 1 > 2 no, 1 > 2 no, 1 > 0
        [0, 0, 1],
    ]  # 2 > 2 tie (wrong), tie, 2 > 0
    np.testing.assert_array_equal(m, expected)
    # two rows average entrywise
    m2 = accuracy_matrix([[3, 1, 2], [0, 0, 0]], [[2, 2, 0], [-1, 1, 0]])
    np.testing.assert_array_equal(m2, [[1.0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0, 0.5]])


def test_rm_bench_summary_triangles():
    # RM-Bench: hard = upper-right (j > i), normal = diagonal, easy = lower-left (j < i)
    m = np.array([[0.5, 0.1, 0.2], [0.9, 0.6, 0.3], [0.8, 0.7, 0.7]])
    s = rm_bench_summary(m)
    assert s["hard"] == pytest.approx((0.1 + 0.2 + 0.3) / 3)
    assert s["normal"] == pytest.approx((0.5 + 0.6 + 0.7) / 3)
    assert s["easy"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert s["average"] == pytest.approx(m.mean())
    assert s["average"] == pytest.approx((s["hard"] + s["normal"] + s["easy"]) / 3)
    with pytest.raises(ValueError):
        rm_bench_summary(np.ones((1, 1)))


def test_a_style_biased_reward_is_easy_but_not_hard():
    # The reward only likes long (fancy) answers: score = style index, plus 0.5 if chosen.
    ds = parse_rows([rmb_row() for _ in range(4)])
    chosen = [[0.5, 1.5, 2.5]] * 4
    rejected = [[0.0, 1.0, 2.0]] * 4
    r = evaluate(ds, chosen, rejected)
    s = r.overall.summary
    assert s["normal"] == 1.0 and s["easy"] == 1.0 and s["hard"] == 0.0
    assert r.overall.accuracy == pytest.approx(6 / 9)


def test_per_domain_pooled_and_mean_over_domains():
    rows = [rmb_row("a"), rmb_row("a"), rmb_row("b")]
    ds = parse_rows(rows)
    assert ds.format == "rm-bench" and ds.k == 3 and ds.groups() == ["a", "b"]
    win, lose, tie = [1, 1, 1], [0, 0, 0], [0, 0, 0]
    r = evaluate(ds, [win, lose, tie], [lose, win, tie], aggregation="sum")
    a, b = r.groups
    assert (a.name, a.rows, a.accuracy) == ("a", 2, 0.5)
    assert (b.name, b.rows, b.accuracy) == ("b", 1, 0.0)  # all ties: wrong
    assert r.overall.accuracy == pytest.approx(1 / 3)
    assert r.mean_over_groups == pytest.approx(0.25)
    np.testing.assert_array_equal(np.array(a.matrix), np.full((3, 3), 0.5))


def test_rewardbench_subsets():
    ds = parse_rows([rb_row("x"), rb_row("x"), rb_row("x"), rb_row("y")])
    assert ds.format == "rewardbench" and ds.k == 1
    r = evaluate(ds, [[2], [1], [1], [5]], [[1], [1], [2], [4]])
    acc = {g.name: g.accuracy for g in r.groups}
    assert acc == {"x": pytest.approx(1 / 3), "y": 1.0}
    assert r.overall.accuracy == 0.5
    assert r.overall.matrix is None and r.overall.summary is None
    with pytest.raises(ValueError, match="shape"):
        evaluate(ds, [[1]], [[0]])


# ---------------------------------------------------------------------- readers


def test_reads_jsonl_and_json_array(tmp_path):
    rows = [rmb_row("chat"), rmb_row("math", prompt=[{"role": "user", "content": "hi"}])]
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    arr = tmp_path / "b.json"
    arr.write_text(json.dumps(rows))
    for path in (jl, arr):
        ds = read_preferences(path)
        assert ds.format == "rm-bench" and len(ds.rows) == 2
        assert ds.rows[1].prompt == [{"role": "user", "content": "hi"}]
    rb = tmp_path / "c.jsonl"
    rb.write_text(json.dumps({**rb_row(), "system": "be brief", "id": 7}) + "\n")
    ds = read_preferences(rb)
    assert ds.format == "rewardbench" and ds.rows[0].system == "be brief" and ds.rows[0].id == 7


@pytest.mark.parametrize(
    "row, message",
    [
        ({"chosen": ["a"], "rejected": ["b"], "domain": "d"}, "missing 'prompt'"),
        (
            {"prompt": "p", "chosen": ["a", "b"], "rejected": ["c"], "domain": "d"},
            "has 2 responses but 'rejected' has 1",
        ),
        ({"prompt": "p", "chosen": ["a"], "rejected": "c", "domain": "d"}, "'rejected' must be a non-empty list"),
        ({"prompt": "p", "chosen": ["a"], "rejected": ["c"]}, "missing 'domain'"),
        ({"prompt": "p", "chosen": 3, "rejected": "c", "subset": "s"}, "'chosen' must be a list of texts"),
        ({"prompt": "", "chosen": "a", "rejected": "c", "subset": "s"}, "'prompt' is empty"),
        ({"prompt": "p", "chosen": "a", "rejected": "c", "subset": ""}, "'subset' must be a non-empty text"),
        ({"prompt": "p", "chosen": "a", "rejected": "c", "subset": "s", "system": 1}, "'system' must be a text"),
        ({"prompt": 5, "chosen": "a", "rejected": "c", "subset": "s"}, "'prompt' must be text"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_malformed_rows_give_clear_errors(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_preferences(path)
    assert f"{path}:1" in str(info.value)


def test_file_level_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(rb_row()) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"x.jsonl:2: not JSON"):
        read_preferences(path)
    path.write_text(json.dumps(rb_row()) + "\n" + json.dumps(rmb_row()) + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl:2: 'chosen' is a list but the file is in RewardBench form"):
        read_preferences(path)
    path.write_text(json.dumps(rmb_row(k=3)) + "\n" + json.dumps(rmb_row(k=2)) + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl:2: 2 responses per side, but the first row has 3"):
        read_preferences(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="no rows"):
        read_preferences(path)
    path.write_text(json.dumps(rb_row()) + "\n")
    with pytest.raises(ValueError, match="'chosen' is a text but the file is in RM-Bench form"):
        read_preferences(path, "rm-bench")
    with pytest.raises(ValueError, match="format must be"):
        read_preferences(path, "csv")


# --------------------------------------------------------------- items, reports


def test_items_order_system_and_prompt_modes():
    ds = parse_rows([{**rmb_row(k=2), "system": "own"}, rmb_row(k=2, prompt="q")])
    items = build_items(ds)
    assert [it["response"] for it in items] == ["c0", "c1", "r0", "r1"] * 2
    assert items[0] == {"messages": [{"role": "user", "content": "p"}], "system": "own", "response": "c0"}
    assert "system" not in items[4]
    over = build_items(ds, system="criteria")
    assert {it["system"] for it in over} == {"criteria"}
    raw = build_items(parse_rows([rb_row()]), prompt_mode="raw")
    assert raw[0] == {"prompt": "p", "response": "good"}
    with pytest.raises(ValueError, match="needs chat prompts"):
        build_items(parse_rows([rb_row()]), system="x", prompt_mode="raw")


def test_reports(tmp_path):
    ds = parse_rows([rmb_row("a"), rmb_row("b")])
    res = {
        agg: evaluate(ds, [[1, 2, 3], [0, 0, 0]], [[0, 1, 2], [1, 1, 1]], aggregation=agg)
        for agg in ("sum", "loglik_mean")
    }
    md = markdown(res, {"model": "m", "rows": 2})
    assert "| a | 1 | 66.7 | 66.7 |" in md  # 6 of 9 comparisons won
    assert "| b | 1 | 0.0 | 0.0 |" in md
    assert "hard" in md and "easy" in md and "chosen \\ rejected" in md
    data = json.loads(json.dumps(to_json(res, {"model": "m"})))
    s = data["results"]["sum"]["overall"]["summary"]
    assert s["normal"] == pytest.approx(0.5) and s["easy"] == pytest.approx(0.5)
    assert s["hard"] == 0.0  # above the diagonal, row a only ties or loses (1 vs 1, 1 vs 2, 2 vs 2)
    png = write_png(res, tmp_path / "x.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
