"""Batch output files, append-only, and what a rerun over one must skip.

JSONL: one OpenAI batch output line per input line, flushed as each answer completes. A kill can
leave a partial last line; reopening truncates it (its request is sent again).

Parquet (``OUTPUT.parquet``): one row per item. A Parquet file is only readable once closed, so rows
are written as whole part files beside it (``OUTPUT.parquet.parts/part-NNNNNN.parquet``, each renamed
into place when complete), and the run's end merges them into ``OUTPUT.parquet``. A rerun reads the
parts (or the finished file) to know what is done.

Either way a request's output is written whole or not at all, so a rerun has no gap and no duplicate.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from endorm_server.batch.idset import IdSet
from endorm_server.batch.records import Record, table

PART_ROWS = 4096
PART_INTERVAL_S = 5.0


@dataclass
class Written:
    """What the output holds: a rerun sends only the rest."""

    # custom_ids answered (or refused for their own reason): one per row, so not a Python set
    ids: IdSet | set[str] = field(default_factory=IdSet)
    duplicates: Counter[str] = field(default_factory=Counter)  # duplicate_custom_id lines written per id
    lines: set[int] = field(default_factory=set)  # lines refused before a custom_id was known

    def add(self, custom_id: str | None, line: int | None, duplicate: bool) -> None:
        if duplicate and custom_id is not None:
            self.duplicates[custom_id] += 1
        elif custom_id is not None:
            self.ids.add(custom_id)
        elif line is not None:
            self.lines.add(line)

    def __len__(self) -> int:
        return len(self.ids) + sum(self.duplicates.values()) + len(self.lines)


class Sink(Protocol):
    def open(self) -> Written: ...
    def write(self, record: Record) -> None: ...
    def close(self, complete: bool) -> None: ...


class OutputError(ValueError):
    """The output exists but is not one this tool wrote: refuse to append to it."""


def _is_duplicate(record: Record) -> bool:
    return record.line_error is not None and record.line_error.code == "duplicate_custom_id"


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None

    def open(self) -> Written:
        written = Written()
        if self.path.exists():
            with open(self.path, "rb+") as f:
                good = 0
                for number, raw in enumerate(f, 1):
                    try:
                        obj = json.loads(raw) if raw.endswith(b"\n") else None
                    except ValueError:
                        obj = None
                    if not isinstance(obj, dict) or "custom_id" not in obj:
                        if f.read(1):  # not the last line: not a file of ours
                            raise OutputError(f"{self.path} line {number} is not a batch output line")
                        break  # a partial last line of a killed run: dropped, its request is sent again
                    error: dict = obj["error"] if isinstance(obj.get("error"), dict) else {}
                    dup = obj.get("response") is None and error.get("code") == "duplicate_custom_id"
                    written.add(obj.get("custom_id"), error.get("line"), dup)
                    good += len(raw)
                f.truncate(good)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        return written

    def write(self, record: Record) -> None:
        assert self._file is not None
        self._file.write(json.dumps(record.openai_line(), ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self, complete: bool) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ParquetSink:
    def __init__(self, path: Path, part_rows: int = PART_ROWS, part_interval_s: float = PART_INTERVAL_S) -> None:
        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        self.part_rows = part_rows
        self.part_interval_s = part_interval_s
        self._rows: list[dict] = []
        self._next = 0
        self._since = 0.0
        self._new_parts = False

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def open(self) -> Written:
        import time

        import pyarrow.parquet as pq

        if self.path.exists():
            if self.parts.exists():  # a merge that finished but was killed before removing its parts
                shutil.rmtree(self.parts)
            self.parts.mkdir(parents=True)
            os.replace(self.path, self.parts / "part-000000.parquet")  # the finished file is the first part
        self.parts.mkdir(parents=True, exist_ok=True)
        for tmp in self.parts.glob("*.tmp"):  # a part being written when the run was killed
            tmp.unlink()
        written = Written()
        files = self._part_files()
        for part in files:
            cols = pq.read_table(part, columns=["custom_id", "line", "status_code", "error_code", "index"])
            ids, lines, codes, status = (
                cols.column(c).to_pylist() for c in ("custom_id", "line", "error_code", "status_code")
            )
            for cid, line, code, st in zip(ids, lines, codes, status):
                written.add(cid, line, st is None and code == "duplicate_custom_id")
        self._next = int(files[-1].stem.split("-")[1]) + 1 if files else 0
        self._since = time.monotonic()
        return written

    def write(self, record: Record) -> None:
        import time

        self._rows.extend(record.rows())
        if len(self._rows) >= self.part_rows or time.monotonic() - self._since >= self.part_interval_s:
            self._flush()

    def _flush(self) -> None:
        import time

        import pyarrow.parquet as pq

        self._since = time.monotonic()
        if not self._rows:
            return
        final = self.parts / f"part-{self._next:06d}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table(self._rows), tmp)
        os.replace(tmp, final)
        self._next += 1
        self._rows = []
        self._new_parts = True

    def close(self, complete: bool) -> None:
        import pyarrow.parquet as pq

        self._flush()
        if not complete:
            return
        from endorm_server.batch.records import row_schema

        schema = row_schema()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in self._part_files():
                writer.write_table(pq.read_table(part, schema=schema))
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts)


def sink_for(path: Path) -> Sink:
    return ParquetSink(path) if path.suffix == ".parquet" else JsonlSink(path)
