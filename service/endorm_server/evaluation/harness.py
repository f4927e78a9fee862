"""Preference files in, accuracies out: the arithmetic of ``endorm eval``.

Two file forms are read (JSON Lines, or one JSON array as RM-Bench ships it):

- **RM-Bench**: ``{"prompt", "chosen": [k responses], "rejected": [k responses],
  "domain"}``. Entry ``[i][j]`` of the k x k accuracy matrix is the fraction of rows
  where ``chosen[i]`` scores strictly above ``rejected[j]``. RM-Bench orders the k = 3
  responses from plain to fancy (concise, detailed, detailed with markdown) and defines,
  exactly as its ``compute_accuracy``:

  * **hard** = mean of the upper-right triangle (``j > i``: a plainer chosen response
    against a fancier rejected one),
  * **normal** = mean of the diagonal (same style),
  * **easy** = mean of the lower-left triangle (``j < i``: a fancier chosen response
    against a plainer rejected one);

  a domain's accuracy is the mean of all k x k entries (for k = 3, the mean of easy,
  normal and hard).
- **RewardBench**: ``{"prompt", "chosen", "rejected", "subset"}`` with one response
  each; a subset's accuracy is the fraction of rows with chosen strictly above
  rejected.

Ties count as wrong everywhere (``chosen > rejected`` strictly; a NaN score is never
above anything). Optional fields in both forms: ``id``, and ``system`` (the reward's
criteria text, chat prompts only). ``prompt`` is text, or a list of chat messages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, cast

import numpy as np

__all__ = [
    "FORMATS",
    "Dataset",
    "EvalResult",
    "GroupResult",
    "PreferenceRow",
    "accuracy_matrix",
    "evaluate",
    "is_correct",
    "parse_rows",
    "read_preferences",
    "rm_bench_summary",
]

Format = Literal["rm-bench", "rewardbench"]
FORMATS = ("auto", "rm-bench", "rewardbench")
_GROUP_KEY = {"rm-bench": "domain", "rewardbench": "subset"}


@dataclass(frozen=True)
class PreferenceRow:
    prompt: str | list[dict[str, str]]
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    group: str
    system: str | None = None
    id: Any = None


@dataclass
class Dataset:
    format: Format
    rows: list[PreferenceRow]
    source: str = ""

    @property
    def k(self) -> int:
        return len(self.rows[0].chosen) if self.rows else 0

    @property
    def group_key(self) -> str:
        return _GROUP_KEY[self.format]

    def groups(self) -> list[str]:
        """Group names in order of first appearance."""
        return list(dict.fromkeys(r.group for r in self.rows))


# --------------------------------------------------------------------------- reading


def _where(source: str, lineno: int) -> str:
    return f"{source}:{lineno}" if source else f"row {lineno}"


def _check_prompt(value: Any, where: str) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{where}: 'prompt' is empty")
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"{where}: 'prompt' must be text or a non-empty list of {{role, content}} messages")


def _detect(row: dict[str, Any], where: str) -> Format:
    chosen = row.get("chosen")
    if isinstance(chosen, list):
        return "rm-bench"
    if isinstance(chosen, str):
        return "rewardbench"
    if "chosen" not in row:
        raise ValueError(f"{where}: missing 'chosen'")
    raise ValueError(
        f"{where}: 'chosen' must be a list of texts (RM-Bench form) or a text (RewardBench form), "
        f"got {type(chosen).__name__}"
    )


def _parse_row(row: Any, fmt: Format, where: str) -> PreferenceRow:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: each row must be a JSON object, got {type(row).__name__}")
    group_key = _GROUP_KEY[fmt]
    missing = [k for k in ("prompt", "chosen", "rejected", group_key) if k not in row]
    if missing:
        form = "RM-Bench" if fmt == "rm-bench" else "RewardBench"
        raise ValueError(
            f"{where}: missing {', '.join(repr(m) for m in missing)} ({form} form needs "
            f"prompt, chosen, rejected, {group_key})"
        )
    prompt = _check_prompt(row["prompt"], where)
    if fmt == "rm-bench":
        chosen, rejected = row["chosen"], row["rejected"]
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}: '{name}' must be a non-empty list of texts (RM-Bench form)")
        if len(chosen) != len(rejected):
            raise ValueError(f"{where}: 'chosen' has {len(chosen)} responses but 'rejected' has {len(rejected)}")
    else:
        chosen, rejected = row["chosen"], row["rejected"]
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise ValueError(f"{where}: '{name}' must be a text (RewardBench form), got {type(value).__name__}")
        chosen, rejected = [chosen], [rejected]
    group = row[group_key]
    if not isinstance(group, str) or not group:
        raise ValueError(f"{where}: '{group_key}' must be a non-empty text")
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"{where}: 'system' must be a text")
    return PreferenceRow(
        prompt=prompt, chosen=tuple(chosen), rejected=tuple(rejected), group=group, system=system, id=row.get("id")
    )


def parse_rows(
    raw: Sequence[Any], fmt: str = "auto", source: str = "", first_line: int = 1, linenos: Sequence[int] | None = None
) -> Dataset:
    """Validate decoded rows (dicts) into a :class:`Dataset`; ``ValueError`` names the bad row."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not raw:
        raise ValueError(f"{source or 'input'}: no rows")
    lines = list(linenos) if linenos is not None else [first_line + i for i in range(len(raw))]
    if fmt == "auto":
        first = raw[0]
        if not isinstance(first, dict):
            raise ValueError(f"{_where(source, lines[0])}: each row must be a JSON object, got {type(first).__name__}")
        fmt = _detect(first, _where(source, lines[0]))
    rows = []
    for lineno, row in zip(lines, raw):
        where = _where(source, lineno)
        if isinstance(row, dict) and "chosen" in row and fmt == "rm-bench" and isinstance(row["chosen"], str):
            raise ValueError(f"{where}: 'chosen' is a text but the file is in RM-Bench form (lists of responses)")
        if isinstance(row, dict) and fmt == "rewardbench" and isinstance(row.get("chosen"), list):
            raise ValueError(f"{where}: 'chosen' is a list but the file is in RewardBench form (one response)")
        rows.append(_parse_row(row, cast(Format, fmt), where))
    k = len(rows[0].chosen)
    for lineno, r in zip(lines, rows):
        if len(r.chosen) != k:
            raise ValueError(
                f"{_where(source, lineno)}: {len(r.chosen)} responses per side, but the first row "
                f"has {k} (the k x k matrix needs the same k on every row)"
            )
    return Dataset(format=cast(Format, fmt), rows=rows, source=source)


def read_preferences(path: str | Path, fmt: str = "auto") -> Dataset:
    """Read a preference file: JSON Lines (one row per line) or a JSON array of rows."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    src = str(path)
    if text.lstrip().startswith("["):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{src}: not valid JSON: {exc}") from None
        return parse_rows(raw, fmt, source=src, linenos=[i + 1 for i in range(len(raw))])
    raw, lines = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{src}:{lineno}: not JSON: {exc}") from None
        lines.append(lineno)
    return parse_rows(raw, fmt, source=src, linenos=lines)


# ------------------------------------------------------------------------ arithmetic


def is_correct(chosen: float, rejected: float) -> bool:
    """Chosen strictly above rejected: ties (and NaN) are wrong."""
    return bool(chosen > rejected)


def accuracy_matrix(
    chosen: Sequence[Sequence[float]] | np.ndarray, rejected: Sequence[Sequence[float]] | np.ndarray
) -> np.ndarray:
    """k x k matrix: ``M[i][j]`` = fraction of rows with ``chosen[i] > rejected[j]``."""
    c = np.asarray(chosen, dtype=np.float64)
    r = np.asarray(rejected, dtype=np.float64)
    if c.ndim != 2 or c.shape != r.shape or c.shape[0] == 0:
        raise ValueError(
            f"chosen and rejected scores must both be [rows, k] with rows >= 1, got {c.shape} and {r.shape}"
        )
    with np.errstate(invalid="ignore"):
        wins = c[:, :, None] > r[:, None, :]  # NaN compares False: wrong
    return wins.mean(axis=0)


def rm_bench_summary(matrix: np.ndarray) -> dict[str, float]:
    """RM-Bench's hard (upper-right triangle), normal (diagonal), easy (lower-left
    triangle) and their overall mean, for a k x k matrix with k >= 2."""
    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    if m.ndim != 2 or m.shape != (k, k) or k < 2:
        raise ValueError(f"need a square matrix with k >= 2, got shape {m.shape}")
    tri = k * (k - 1) / 2
    return {
        "hard": float(np.sum(np.triu(m, 1)) / tri),
        "normal": float(np.mean(np.diag(m))),
        "easy": float(np.sum(np.tril(m, -1)) / tri),
        "average": float(np.mean(m)),
    }


@dataclass
class GroupResult:
    name: str
    rows: int
    accuracy: float
    matrix: list[list[float]] | None = None  # k x k, k >= 2
    summary: dict[str, float] | None = None  # hard / normal / easy / average, k >= 2

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "rows": self.rows, "accuracy": self.accuracy}
        if self.matrix is not None:
            out["matrix"] = self.matrix
            out["summary"] = self.summary
        return out


@dataclass
class EvalResult:
    format: Format
    k: int
    aggregation: str
    groups: list[GroupResult]
    overall: GroupResult  # every row pooled
    mean_over_groups: float  # unweighted mean of the group accuracies
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "k": self.k,
            "aggregation": self.aggregation,
            "overall": self.overall.to_dict(),
            "mean_over_groups": self.mean_over_groups,
            "groups": [g.to_dict() for g in self.groups],
            **self.extra,
        }


def _group_result(name: str, chosen: np.ndarray, rejected: np.ndarray) -> GroupResult:
    m = accuracy_matrix(chosen, rejected)
    k = m.shape[0]
    if k == 1:
        return GroupResult(name=name, rows=len(chosen), accuracy=float(m[0, 0]))
    return GroupResult(
        name=name, rows=len(chosen), accuracy=float(np.mean(m)), matrix=m.tolist(), summary=rm_bench_summary(m)
    )


def evaluate(
    dataset: Dataset,
    chosen_scores: Sequence[Sequence[float]],
    rejected_scores: Sequence[Sequence[float]],
    aggregation: str = "sum",
) -> EvalResult:
    """Accuracies of one set of scores: per group (domain / subset), pooled, mean over groups.

    ``chosen_scores[n]`` / ``rejected_scores[n]`` are the k scores of row n's responses.
    """
    c = np.asarray(chosen_scores, dtype=np.float64)
    r = np.asarray(rejected_scores, dtype=np.float64)
    n, k = len(dataset.rows), dataset.k
    if c.shape != (n, k) or r.shape != (n, k):
        raise ValueError(f"expected scores of shape ({n}, {k}), got {c.shape} and {r.shape}")
    names = np.array([row.group for row in dataset.rows], dtype=object)
    groups = [_group_result(g, c[names == g], r[names == g]) for g in dataset.groups()]
    overall = _group_result("all", c, r)
    mean = float(np.mean([g.accuracy for g in groups])) if groups else math.nan
    return EvalResult(
        format=dataset.format, k=k, aggregation=aggregation, groups=groups, overall=overall, mean_over_groups=mean
    )
