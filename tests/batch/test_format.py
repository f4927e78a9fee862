"""The batch file formats without an engine: input lines, output lines, Parquet rows, and what a
rerun finds in an output (a partial last line, part files)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from endorm_server.batch.records import COLUMNS, Record
from endorm_server.batch.requests import BatchRequest, LineError, parse_line
from endorm_server.batch.runner import plan
from endorm_server.batch.sinks import JsonlSink, OutputError, ParquetSink, Written
from tests.batch.conftest import request, write_lines


def test_request_lines():
    req = parse_line(request("a", "/v1/score", {"items": []}), 1)
    assert isinstance(req, BatchRequest) and req.route == "/score" and req.target == "/score"
    reward = parse_line(request("b", "/v1/get_reward?aggregation=mean", {"query": []}), 2)
    assert isinstance(reward, BatchRequest) and reward.target == "/get_reward?aggregation=mean"
    # method defaults to POST (vLLM's run-batch files sometimes leave it out); the body is the server's to judge
    assert isinstance(parse_line('{"custom_id": "c", "url": "/compare", "body": 3}', 3), BatchRequest)


@pytest.mark.parametrize(
    ("text", "code", "custom_id"),
    [
        ("not json", "invalid_json", None),
        ("[1, 2]", "invalid_line", None),
        ('{"url": "/score", "body": {}}', "invalid_line", None),
        ('{"custom_id": 7, "url": "/score", "body": {}}', "invalid_line", None),
        (request("a", "/score", {}, method="GET"), "invalid_line", "a"),
        (request("a", "/chat/completions", {}), "unknown_url", "a"),
        (request("a", "http://elsewhere/score", {}), "unknown_url", "a"),
        (request("a", "/score?return_tokens=true", {}), "unknown_url", "a"),  # only /get_reward takes a query
        ('{"custom_id": "a", "url": "/score"}', "invalid_line", "a"),
    ],
)
def test_refused_lines(text, code, custom_id):
    err = parse_line(text, 4)
    assert isinstance(err, LineError) and (err.code, err.custom_id, err.line) == (code, custom_id, 4)
    line = Record.of_error(err).openai_line()
    assert line["response"] is None and line["error"]["code"] == code and line["error"]["line"] == 4


def _answered(custom_id: str, line: int, status: int = 200) -> Record:
    body: dict = {"results": [{"index": 0, "score": -1.5, "num_tokens": 2, "prompt_tokens": 3}], "usage": {}}
    if status != 200:
        body = {"error": {"type": "invalid_request", "code": "invalid_input", "message": "no", "param": "items"}}
    return Record(line, custom_id, "/score", status, "rid", body)


def test_openai_output_line():
    ok = _answered("a", 1).openai_line()
    assert set(ok) == {"id", "custom_id", "response", "error"} and ok["id"].startswith("batch_req_")
    assert ok["response"]["status_code"] == 200 and ok["response"]["request_id"] == "rid" and ok["error"] is None
    bad = _answered("b", 2, 422).openai_line()
    assert bad["error"] == bad["response"]["body"]["error"]  # the server's error, where OpenAI readers look


def test_plan_skips_written_and_reports_duplicates_once(tmp_path: Path):
    lines = [
        request("a", "/score", {}),
        "not json",
        request("a", "/score", {}),  # a duplicate
        request("b", "/nope", {}),
        request("c", "/score", {}),
        request("a", "/score", {}),  # another
    ]
    path = write_lines(tmp_path / "in.jsonl", lines)
    first = list(plan(path, Written()))
    kinds = [(x.custom_id, x.line_error.code if isinstance(x, Record) and x.line_error else "send") for x in first]
    assert kinds == [
        ("a", "send"),
        (None, "invalid_json"),
        ("a", "duplicate_custom_id"),
        ("b", "unknown_url"),
        ("c", "send"),
        ("a", "duplicate_custom_id"),
    ]
    # a rerun after a run that wrote a, the bad line 2, one duplicate of a and b: the rest only
    done = Written(ids={"a", "b"}, duplicates=Counter({"a": 1}), lines={2})
    again = [(x.custom_id, x.line) for x in plan(path, done)]
    assert again == [("c", 5), ("a", 6)]


def test_jsonl_resume_truncates_a_partial_last_line(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    sink = JsonlSink(out)
    assert len(sink.open()) == 0
    sink.write(_answered("a", 1))
    sink.write(Record.of_error(parse_line("not json", 2)))  # type: ignore[arg-type]
    sink.close(False)
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"id": "batch_req_x", "custom_id": "b", "resp')  # killed mid-write
    written = JsonlSink(out).open()
    assert written.ids == {"a"} and written.lines == {2}
    assert out.read_bytes() == whole


def test_jsonl_refuses_a_file_it_did_not_write(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    out.write_text("hello\n" + json.dumps(_answered("a", 1).openai_line()) + "\n")
    with pytest.raises(OutputError, match="line 1"):
        JsonlSink(out).open()


def test_parquet_parts_resume_and_merge(tmp_path: Path):
    out = tmp_path / "out.parquet"
    sink = ParquetSink(out, part_rows=2)
    sink.open()
    for i in range(5):
        sink.write(_answered(f"r{i}", i + 1))
    sink.write(_answered("bad", 6, 422))
    sink.close(False)  # killed: parts stay, no final file
    assert not out.exists() and len(list(sink.parts.glob("part-*.parquet"))) == 3
    (sink.parts / "part-000009.tmp").write_bytes(b"half a part")  # a part being written at the kill
    again = ParquetSink(out, part_rows=2)
    written = again.open()
    assert written.ids == {"r0", "r1", "r2", "r3", "r4", "bad"}
    again.write(_answered("r5", 7))
    again.close(True)
    table = pq.read_table(out)
    assert table.column_names == COLUMNS and not sink.parts.exists()
    rows = table.to_pylist()
    assert sorted(r["custom_id"] for r in rows) == sorted(["bad", "r0", "r1", "r2", "r3", "r4", "r5"])
    bad = next(r for r in rows if r["custom_id"] == "bad")
    assert (bad["index"], bad["score"], bad["error_code"], bad["status_code"]) == (None, None, "invalid_input", 422)
    # a finished file resumed (more input): it becomes the first part, nothing is lost or doubled
    third = ParquetSink(out)
    assert len(third.open().ids) == 7
    third.write(_answered("r6", 8))
    third.close(True)
    assert pq.read_table(out).num_rows == 8


def _record_of_line(line: dict) -> Record:
    """An OpenAI output line back as a Record (the Parquet test writes a JSONL run's answers)."""
    if line["response"] is None:
        err = line["error"]
        return Record.of_error(LineError(err["line"], line["custom_id"], err["code"], err["message"]))
    resp = line["response"]
    body = resp["body"]
    route = (
        "/get_reward"
        if "rewards" in body
        else "/classify"
        if "data" in body
        else "/score"
        if "results" in body or "error" in body
        else None
    )
    return Record(0, line["custom_id"], route, resp["status_code"], resp["request_id"], body)


def test_idset_is_exact_and_keeps_ids_out_of_the_python_heap():
    """The custom_ids of a run (one per row) live in SQLite's temporary database, not in Python objects:
    a Python set of 50k ids is about 5 MiB of traced allocations, the IdSet's a few KiB."""
    import tracemalloc

    from endorm_server.batch.idset import IdSet

    ids = IdSet(["a", "b"])
    assert ids.add("c") and not ids.add("a") and len(ids) == 3
    assert "a" in ids and "z" not in ids and 3 not in ids and ids == {"a", "b", "c"}
    tracemalloc.start()
    try:
        big = IdSet()
        for i in range(50_000):
            big.add(f"row-{i:08d}")
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(big) == 50_000 and "row-00049999" in big and "row-00050000" not in big
    assert traced < 512 * 1024, traced
    big.close()
