"""One answered (or refused) batch line -> its OpenAI batch output line, and its per-item Parquet rows.

The JSONL line is the OpenAI batch output object: ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``. ``error`` is null for a 2xx answer, the body's error object for a
4xx/5xx one, and for a line that was never sent (not JSON, unknown url, duplicate custom_id)
``{"code", "message", "line"}`` with ``response`` null. Parquet has one row per item instead.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from endorm_server.batch.requests import LineError

# one row per item; request-level failures are one row with index null
COLUMNS_TYPES = (
    ("custom_id", "string"),
    ("line", "int64"),
    ("url", "string"),
    ("status_code", "int32"),
    ("request_id", "string"),
    ("index", "int64"),
    ("score", "float64"),
    ("num_tokens", "int64"),
    ("prompt_tokens", "int64"),
    ("truncated_tokens", "int64"),
    ("criteria_score", "float64"),
    ("baseline_score", "float64"),
    ("error_type", "string"),
    ("error_code", "string"),
    ("error_message", "string"),
    ("error_param", "string"),
    ("token_ids", "list<int64>"),
    ("token_rewards", "list<float64>"),
    ("token_logprobs", "list<float64>"),
)
COLUMNS = [name for name, _ in COLUMNS_TYPES]


def row_schema() -> Any:
    """The Parquet rows' ``pyarrow.Schema`` (pyarrow is imported only for Parquet output)."""
    import pyarrow as pa

    def of(kind: str) -> Any:
        return pa.list_(of(kind[5:-1])) if kind.startswith("list<") else getattr(pa, kind)()

    return pa.schema([(name, of(kind)) for name, kind in COLUMNS_TYPES])


@dataclass
class Record:
    """What one input line came to."""

    line: int
    custom_id: str | None
    route: str | None = None  # None: the line was never sent
    status_code: int | None = None
    request_id: str | None = None
    body: Any = None  # the answer's JSON
    line_error: LineError | None = None

    @classmethod
    def of_error(cls, err: LineError) -> Record:
        return cls(err.line, err.custom_id, line_error=err)

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def error(self) -> dict[str, Any] | None:
        if self.line_error is not None:
            return self.line_error.body()
        if self.ok:
            return None
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return err if isinstance(err, dict) else {"code": "http_error", "message": f"HTTP {self.status_code}"}

    def openai_line(self) -> dict[str, Any]:
        response = None
        if self.status_code is not None:
            response = {"status_code": self.status_code, "request_id": self.request_id, "body": self.body}
        return {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": self.custom_id,
            "response": response,
            "error": self.error(),
        }

    def tokens(self) -> int:
        """Tokens the answer scored (for the progress line): usage.total_tokens, or /get_reward's response tokens."""
        if not self.ok or not isinstance(self.body, dict):
            return 0
        usage = self.body.get("usage")
        if isinstance(usage, dict):
            return int(usage.get("total_tokens") or 0)
        logs = self.body.get("extra_logs")
        if isinstance(logs, dict):
            return int(sum(logs.get("endorm_response_tokens") or []))
        return 0

    def rows(self) -> list[dict[str, Any]]:
        """One row per item (``ROW_SCHEMA``)."""
        base = {"custom_id": self.custom_id, "line": self.line, "url": self.route, "status_code": self.status_code}
        base["request_id"] = self.request_id
        if not self.ok:
            return [{**base, **_error_columns(self.error())}]
        body = self.body
        if self.route in ("/score", "/compare"):
            return [{**base, **_result_columns(r)} for r in body.get("results", [])]
        if self.route == "/get_reward":
            errors = {e["index"]: e for e in body.get("errors", [])}
            logs = body.get("extra_logs", {})
            lengths = logs.get("endorm_response_tokens", [])
            cut = logs.get("endorm_truncated_tokens", [])
            out = []
            for i, reward in enumerate(body.get("rewards", [])):
                row = {**base, "index": i, "score": reward}
                if i in errors:
                    row.update(_error_columns(errors[i]))
                else:
                    row["num_tokens"] = int(lengths[i]) if i < len(lengths) else None
                    row["truncated_tokens"] = int(cut[i]) if i < len(cut) else None
                out.append(row)
            return out
        if self.route == "/classify":
            out = []
            for d in body.get("data", []):
                probs = d.get("probs") or []
                row = {**base, "index": d.get("index"), "score": probs[-1] if probs else None}
                out.append({**row, **_error_columns(d.get("error"))})
            return out
        return [base]


def _error_columns(err: dict[str, Any] | None) -> dict[str, Any]:
    if not err:
        return {}
    return {
        "error_type": err.get("type"),
        "error_code": err.get("code"),
        "error_message": err.get("message"),
        "error_param": err.get("param"),
    }


def _result_columns(result: dict[str, Any]) -> dict[str, Any]:
    row = {
        k: result.get(k)
        for k in (
            "index",
            "score",
            "num_tokens",
            "prompt_tokens",
            "truncated_tokens",
            "criteria_score",
            "baseline_score",
        )
    }
    row.update(_error_columns(result.get("error")))
    tokens = result.get("tokens")
    if tokens is not None:
        row["token_ids"] = [t["id"] for t in tokens]
        row["token_rewards"] = [t["reward"] for t in tokens]
        row["token_logprobs"] = [t["logprob"] for t in tokens]
    return row


def table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=row_schema())
