"""``endorm score``: score a preference file offline, in-process, with a progress bar.

Input JSONL, one pair per line: a prompt (``prompt`` | ``messages`` |
``prompt_ids``, optional ``system``) and ``chosen`` / ``rejected`` responses
(text, or token-id lists). Output JSONL: the input line plus
``chosen_score``, ``rejected_score``, ``margin`` and ``correct``
(chosen strictly above rejected; ties count as wrong).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.config import Settings
from service.scorer import Scorer, ScoreOptions
from service.steps import split_on_separator

PROMPT_KEYS = ("prompt", "messages", "prompt_ids", "system")


@dataclass
class Summary:
    pairs: int
    correct: int
    output: Path

    @property
    def accuracy(self) -> float:
        return self.correct / self.pairs if self.pairs else float("nan")

    def describe(self) -> str:
        return f"{self.pairs} pairs, accuracy {self.accuracy:.4f} ({self.correct}/{self.pairs}); wrote {self.output}"


def _response(value: Any, step_separator: str | None = None) -> dict[str, Any]:
    if isinstance(value, list):
        return {"response_ids": value}
    if step_separator is not None and isinstance(value, str) and value:  # steps; no separator: one step
        return {"steps": split_on_separator(value, step_separator, required=False)}
    return {"response": value}


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from None
            if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
                raise ValueError(f"{path}:{lineno}: needs 'chosen' and 'rejected'")
            rows.append(row)
    return rows


async def score_rows(scorer: Scorer, rows: list[dict[str, Any]], options: ScoreOptions, batch_size: int,
                     progress: tqdm | None = None, step_separator: str | None = None) -> list[dict[str, Any]]:
    """Score chosen and rejected of every row; ``batch_size`` pairs in flight at once.

    With ``step_separator`` text responses are scored as steps (``chosen_steps`` /
    ``rejected_steps``: each step's reward sum), for the step_min / step_last aggregations."""
    out: list[dict[str, Any]] = [{} for _ in rows]
    limit = asyncio.Semaphore(batch_size)

    async def one(i: int, row: dict[str, Any]) -> None:
        async with limit:
            prompt = {k: row[k] for k in PROMPT_KEYS if k in row}
            chosen, rejected = await scorer.score([{**prompt, **_response(row["chosen"], step_separator)},
                                                   {**prompt, **_response(row["rejected"], step_separator)}], options)
            out[i] = {**row, "chosen_score": chosen.score, "rejected_score": rejected.score,
                      "margin": chosen.score - rejected.score, "correct": chosen.score > rejected.score}
            for name, s in (("chosen_steps", chosen), ("rejected_steps", rejected)):
                if s.steps is not None:
                    out[i][name] = [st.reward for st in s.steps]
            if progress is not None:
                progress.update(1)

    await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))
    return out


def score_file(settings: Settings, input_path: str, output_path: str, *, aggregation: str = "sum",
               batch_size: int = 64, step_separator: str | None = None) -> Summary:
    rows = read_pairs(input_path)

    async def run() -> list[dict[str, Any]]:
        scorer = await Scorer.start(settings)
        try:
            with tqdm(total=len(rows), desc="scoring pairs", unit="pair") as bar:
                return await score_rows(scorer, rows, ScoreOptions(aggregation=aggregation), batch_size, bar,
                                        step_separator=step_separator)
        finally:
            await scorer.shutdown()

    scored = asyncio.run(run())
    out = Path(output_path)
    with open(out, "w", encoding="utf-8") as f:
        for row in scored:
            f.write(json.dumps(row) + "\n")
    return Summary(pairs=len(scored), correct=sum(r["correct"] for r in scored), output=out)
