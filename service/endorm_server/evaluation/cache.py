"""Per-response scores kept in a JSON Lines file, so an interrupted ``endorm eval`` resumes.

A real-model evaluation on CPU runs for tens of minutes; every scored chunk is appended
(and flushed) as soon as it is done, one line per response::

    {"key": "<sha256>", "scores": {"sum": ..., "mean": ..., ...}}

The key hashes the request item (prompt fields and response) together with everything
else that changes a score (model, alpha, terminal, gamma, beta, ...), so a cache file
shared by runs with different settings never hands back a wrong score. A line cut short
by a kill is ignored on reading (that response is scored again).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence


class ScoreCache:
    def __init__(self, path: str | Path, config: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self._salt = json.dumps(dict(config), sort_keys=True, default=str)
        self._scores: dict[str, dict[str, float]] = {}
        self.ignored_lines = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    key, scores = row["key"], row["scores"]
                    if not isinstance(key, str) or not isinstance(scores, dict):
                        raise ValueError
                    self._scores.setdefault(key, {}).update({str(a): float(s) for a, s in scores.items()})
                except (ValueError, KeyError, TypeError):  # a torn last line, or foreign text
                    self.ignored_lines += 1

    def __len__(self) -> int:
        return len(self._scores)

    def key(self, item: Mapping[str, Any]) -> str:
        text = json.dumps({"config": self._salt, "item": item}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, item: Mapping[str, Any], aggregations: Sequence[str]) -> dict[str, float] | None:
        """The cached scores of ``item`` if every aggregation asked for is there."""
        got = self._scores.get(self.key(item))
        if got is None or any(a not in got or math.isnan(got[a]) for a in aggregations):
            return None
        return {a: got[a] for a in aggregations}

    def put(self, items: Sequence[Mapping[str, Any]], scores: Mapping[str, Sequence[float]]) -> None:
        """Append one line per item and flush it to disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for n, item in enumerate(items):
            key = self.key(item)
            row = {a: float(s[n]) for a, s in scores.items()}
            self._scores.setdefault(key, {}).update(row)
            lines.append(json.dumps({"key": key, "scores": row}) + "\n")
        with open(self.path, "a", encoding="utf-8") as f:
            # a kill mid-write leaves a torn line; make sure it is not glued to the next one
            if f.tell() > 0 and not self._ends_with_newline():
                f.write("\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
