"""``endorm batch`` end to end with the real engine: every line answered once, bad lines as their own
error lines, answers equal to the HTTP server's, Parquet rows, and a resume after a kill."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from tests.batch.conftest import (
    fleet,
    kill_group,
    read_output,
    request,
    run_batch,
    score_line,
    start_batch,
    write_lines,
)
from tests.conftest import API_KEY

CHAT = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
GOOD = {
    "group": request(
        "group",
        "/score",
        {
            "items": [
                {"prompt": "2+3=", "response": "5"},
                {"prompt": "2+3=", "response": "6"},
                {"prompt": "2+3=", "response": "5"},  # a duplicate item: computed once, answered twice
            ],
            "return_tokens": True,
        },
    ),
    "report": request(
        "report",
        "/score",
        {
            "items": [{"prompt": "a", "response_ids": [3, 4]}, {"prompt": "a", "response_ids": [10**6]}],
            "item_errors": "report",
        },
    ),
    "v1": request("v1", "/v1/score", {"items": [{"messages": [{"role": "user", "content": "hi"}], "response": "yo"}]}),
    "compare": request("compare", "/compare", {"prompt": "The sky is", "responses": [" blue", " green", " blue."]}),
    "reward": request("reward", "/get_reward?aggregation=mean", {"query": [CHAT + "5<|im_end|>"], "prompts": [CHAT]}),
    "classify": request("classify", "/classify", {"input": CHAT + "5<|im_end|>\n"}),
    "empty": request("empty", "/score", {"items": []}),  # the server's 422
    "too_long": score_line("too_long", "x " * 600, "y"),  # over max_model_len: the server's 413
}
REFUSED = {
    "not json": "invalid_json",
    request("get", "/score", {}, method="GET"): "invalid_line",
    request("chat", "/v1/chat/completions", {}): "unknown_url",
    request("group", "/score", {"items": []}): "duplicate_custom_id",
}
FILLER = [score_line(f"f{i:03d}", f"{i} + {i} =", f" {2 * i}", return_tokens=i % 2 == 0) for i in range(40)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, list[str]]:
    lines = [*GOOD.values(), *REFUSED, *FILLER]
    lines.insert(3, "")  # blank lines are skipped, as by OpenAI's reader
    return write_lines(tmp_path_factory.mktemp("batch") / "in.jsonl", lines), lines


@pytest.fixture(scope="module")
def answered(mixed) -> tuple[list[dict], str]:
    """One run over the mixed file, 8 requests in flight."""
    path, _ = mixed
    out = path.with_name("out.jsonl")
    proc = run_batch(path, out, "--max-in-flight", "8")
    return read_output(out), proc.stdout + proc.stderr


def test_every_line_answered_once(mixed, answered):
    path, lines = mixed
    out, log = answered
    assert len(out) == sum(1 for line in lines if line.strip())
    sent = [o["custom_id"] for o in out if o["response"] is not None]
    assert sorted(sent) == sorted([*GOOD, *(f"f{i:03d}" for i in range(40))])
    assert all(o["id"].startswith("batch_req_") and set(o) == {"id", "custom_id", "response", "error"} for o in out)
    assert "lines written (" in log and "tokens/s" in log  # the summary, and progress lines (stderr is a pipe)


def test_error_lines(answered):
    out, _ = answered
    refused = [o for o in out if o["response"] is None]
    assert sorted(o["error"]["code"] for o in refused) == sorted(REFUSED.values())
    dup = next(o for o in refused if o["error"]["code"] == "duplicate_custom_id")
    assert dup["custom_id"] == "group" and "earlier line" in dup["error"]["message"]
    by_id = {o["custom_id"]: o for o in out if o["response"] is not None}
    for cid, status, code in (("empty", 422, "invalid_input"), ("too_long", 413, "sequence_too_long")):
        assert by_id[cid]["response"]["status_code"] == status
        assert by_id[cid]["error"]["code"] == code == by_id[cid]["response"]["body"]["error"]["code"]
    report = by_id["report"]["response"]["body"]["results"]
    assert report[0]["score"] is not None and report[1]["error"]["code"] == "token_out_of_vocabulary"
    group = by_id["group"]["response"]["body"]["results"]
    assert group[0]["score"] == group[2]["score"] and group[0]["tokens"] == group[2]["tokens"]


def _close(a, b, path=""):
    """Equal JSON, floats within 1e-4 relative (the engine batches these requests with others)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), path
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4), (path, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_equal_to_the_http_server(server, mixed, answered):
    """The same bodies sent one by one to ``endorm serve`` with the same model settings."""
    _, lines = mixed
    out, _ = answered
    by_id = {o["custom_id"]: o for o in out if o["response"] is not None}
    sent = [json.loads(line) for line in [*GOOD.values(), *FILLER]]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
        for req in sent:
            url = req["url"].removeprefix("/v1")
            resp = http.post(url, json=req["body"])
            got = by_id[req["custom_id"]]["response"]
            assert got["status_code"] == resp.status_code, req["custom_id"]
            expected = resp.json()
            if url == "/classify":  # an OpenAI-style id and creation time per answer
                for k in ("id", "created"):
                    expected.pop(k), got["body"].pop(k)
            _close(got["body"], expected, req["custom_id"])


def test_parquet_rows_match_the_jsonl_answers(tmp_path, answered):
    """The Parquet rows of the same answers: one per item, token lists where return_tokens."""
    from endorm_server.batch.sinks import ParquetSink
    from tests.batch.test_format import _record_of_line

    out, _ = answered
    sink = ParquetSink(tmp_path / "out.parquet", part_rows=16)
    sink.open()
    for o in out:
        sink.write(_record_of_line(o))
    sink.close(True)
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    group = sorted((r for r in rows if r["custom_id"] == "group" and r["status_code"]), key=lambda r: r["index"])
    body = next(o for o in out if o["custom_id"] == "group" and o["response"])["response"]["body"]
    assert [r["score"] for r in group] == [x["score"] for x in body["results"]]
    assert group[0]["token_rewards"] == [t["reward"] for t in body["results"][0]["tokens"]]
    assert group[0]["token_ids"] == [t["id"] for t in body["results"][0]["tokens"]]
    reward = [r for r in rows if r["custom_id"] == "reward"]
    assert len(reward) == 1 and reward[0]["num_tokens"] > 0 and reward[0]["score"] is not None
    bad = [r for r in rows if r["custom_id"] == "report" and r["error_code"]]
    assert [(r["index"], r["error_code"]) for r in bad] == [(1, "token_out_of_vocabulary")]
    f1 = next(r for r in rows if r["custom_id"] == "f001")
    assert f1["token_rewards"] is None and f1["score"] is not None  # f001 did not ask for tokens


def test_parquet_output(server, tmp_path):
    """``-o x.parquet``: one row per item, written by the CLI (scored by the shared server, over HTTP)."""
    lines = [score_line(f"p{i}", "2+2=", f"{i}", return_tokens=True) for i in range(6)] + ["oops"]
    path = write_lines(tmp_path / "in.jsonl", lines)
    run_batch(path, tmp_path / "out.parquet", *fleet(server))
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert sorted(r["custom_id"] or "" for r in rows) == ["", *(f"p{i}" for i in range(6))]
    scored = [r for r in rows if r["custom_id"]]
    assert all(r["status_code"] == 200 and len(r["token_rewards"]) == r["num_tokens"] for r in scored)
    assert math.isclose(sum(scored[0]["token_rewards"]), scored[0]["score"], rel_tol=1e-5, abs_tol=1e-5)
    assert [r["error_code"] for r in rows if not r["custom_id"]] == ["invalid_json"]
    assert not (tmp_path / "out.parquet.parts").exists()


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_resume_after_a_kill(server, tmp_path):
    """Kill the run after it wrote N lines (by control: its input is a pipe that has not ended, so it
    cannot finish), leave a half-written line as a kill mid-write does, rerun over the whole file:
    every line's output exactly once, the first run's lines kept. Both runs score on the shared server
    (``--endpoint``, the fleet mode): what is resumed is the output file, the same whatever scores the
    requests, and two engine starts of their own would be most of the test's time."""
    lines = [score_line(f"r{i:03d}", f"{i} * 3 =", f" {3 * i}") for i in range(60)]
    lines[5] = "not json"
    lines[8] = score_line("r000", "again", "x")  # a duplicate custom_id
    first, n_first = lines[:30], 20
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    proc = start_batch(fifo, out, tmp_path / "first.log", "--max-in-flight", "4", *fleet(server))
    opened = threading.Event()

    def feed() -> None:
        with open(fifo, "w") as f:  # blocks until the run opens its input (once the server answered ready)
            f.write("".join(line + "\n" for line in first))
            f.flush()
            opened.set()
            proc.wait()  # keep the pipe open: the run waits for more input until it is killed

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    deadline = time.monotonic() + 600
    try:
        while _complete_lines(out) < n_first:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run wrote too little"
            time.sleep(0.2)
    finally:
        kill_group(proc)
    feeder.join(30)
    assert opened.is_set()
    kept = out.read_bytes()
    n_kept = kept.count(b"\n")
    assert n_first <= n_kept <= len(first)
    out.write_bytes(kept + b'{"id": "batch_req_1", "custom_id": "r059", "response": {"status_co')

    whole = write_lines(tmp_path / "in.jsonl", lines)
    proc2 = run_batch(whole, out, "--max-in-flight", "4", *fleet(server))
    assert f"{n_kept} already in" in proc2.stdout
    assert out.read_bytes().startswith(kept)
    result = read_output(out)
    keys = [o["custom_id"] or f"line {o['error']['line']}" for o in result]
    expected = [f"r{i:03d}" for i in range(60) if i not in (5, 8)] + ["line 6", "r000"]
    assert sorted(keys) == sorted(expected)  # each once; r000 twice: its answer and its duplicate line
    assert [o["error"]["code"] for o in result if o["custom_id"] == "r000" and o["response"] is None] == [
        "duplicate_custom_id"
    ]
    assert all(o["response"]["status_code"] == 200 for o in result if o["response"] is not None)


def test_bad_arguments_are_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "endorm_server.cli", "batch", str(tmp_path / "missing.jsonl"), "-o", "x.jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no input file" in proc.stderr
