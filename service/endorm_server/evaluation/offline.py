"""``endorm score``: score a preference file offline, in-process, with a progress bar.

Input JSONL, one pair per line: a prompt (``prompt`` | ``messages`` |
``prompt_ids``, optional ``system``) and ``chosen`` / ``rejected`` responses
(text, or token-id lists). Output JSONL: the input line plus
``chosen_score``, ``rejected_score``, ``margin`` and ``correct``
(chosen strictly above rejected; ties count as wrong). With ``aggregation="all"`` those
four fields are objects keyed by aggregation, every one computed from the same forward
pass of each response.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tqdm import tqdm

from endorm_server.config import Settings
from endorm_server.core.scorer import ScoreOptions, Scorer
from endorm_server.inputs.step_spans import split_on_separator
from endorm_server.scoring import rewards
from endorm_server.scoring.aggregations import STEP_AGGREGATIONS, TOKEN_AGGREGATIONS, Aggregation
from endorm_server.scoring.steps import aggregate_steps

PROMPT_KEYS = ("prompt", "messages", "prompt_ids", "system")


@dataclass
class Summary:
    pairs: int
    correct: int
    output: Path
    correct_by_aggregation: dict[str, int] | None = None  # aggregation "all"

    @property
    def accuracy(self) -> float:
        return self.correct / self.pairs if self.pairs else float("nan")

    def describe(self) -> str:
        if self.correct_by_aggregation:
            accs = ", ".join(
                f"{a} {c / self.pairs if self.pairs else float('nan'):.4f} ({c}/{self.pairs})"
                for a, c in self.correct_by_aggregation.items()
            )
            return f"{self.pairs} pairs, accuracy {accs}; wrote {self.output}"
        return f"{self.pairs} pairs, accuracy {self.accuracy:.4f} ({self.correct}/{self.pairs}); wrote {self.output}"


def _scores(item, options: ScoreOptions, every: bool) -> float | dict[str, float]:
    """The item's score, or with ``every`` all aggregations from its one set of per-token rewards
    (the step aggregations too when the response was given as steps)."""
    if not every:
        return item.score
    out = {
        a: rewards.aggregate(item.token_rewards, a, gamma=options.gamma, beta=options.beta) for a in TOKEN_AGGREGATIONS
    }
    if item.steps is not None:
        out.update({a: aggregate_steps(item.steps, a) for a in STEP_AGGREGATIONS})
    return out


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


async def score_rows(
    scorer: Scorer,
    rows: list[dict[str, Any]],
    options: ScoreOptions,
    batch_size: int,
    progress: tqdm | None = None,
    step_separator: str | None = None,
    every_aggregation: bool = False,
    contrast: bool = False,
    baseline_system: str | None = None,
) -> list[dict[str, Any]]:
    """Score chosen and rejected of every row; ``batch_size`` pairs in flight at once.

    With ``step_separator`` text responses are scored as steps (``chosen_steps`` /
    ``rejected_steps``: each step's reward sum), for the step_min / step_last aggregations.
    With ``every_aggregation`` the scores are dicts of every aggregation (one pass per response)."""
    out: list[dict[str, Any]] = [{} for _ in rows]
    limit = asyncio.Semaphore(batch_size)

    async def one(i: int, row: dict[str, Any]) -> None:
        async with limit:
            prompt = {k: row[k] for k in PROMPT_KEYS if k in row}
            pair = [
                {**prompt, **_response(row["chosen"], step_separator)},
                {**prompt, **_response(row["rejected"], step_separator)},
            ]
            chosen: Any
            rejected: Any
            # contrast: r(x, system, y) - r(x, baseline, y), both contexts in one job (scoring/contrast.py)
            chosen, rejected = await scorer.score(pair, options, contrast=contrast, baseline_system=baseline_system)
            c: Any
            r: Any
            c, r = _scores(chosen, options, every_aggregation), _scores(rejected, options, every_aggregation)
            if every_aggregation:
                out[i] = {
                    **row,
                    "chosen_score": c,
                    "rejected_score": r,
                    "margin": {a: c[a] - r[a] for a in c},
                    "correct": {a: c[a] > r[a] for a in c},
                }
            else:
                out[i] = {**row, "chosen_score": c, "rejected_score": r, "margin": c - r, "correct": c > r}
            for name, s in (("chosen_steps", chosen), ("rejected_steps", rejected)):
                if s.steps is not None:
                    out[i][name] = [st.reward for st in s.steps]
            if progress is not None:
                progress.update(1)

    await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))
    return out


def score_file(
    settings: Settings,
    input_path: str,
    output_path: str,
    *,
    aggregation: str = "sum",
    batch_size: int = 64,
    gamma: float = 1.0,
    beta: float = 0.0,
    step_separator: str | None = None,
    contrast: bool = False,
    baseline_system: str | None = None,
) -> Summary:
    """``aggregation="all"``: every aggregation per pair, from one forward pass per response."""
    every = aggregation == "all"
    options = ScoreOptions(aggregation="sum" if every else cast(Aggregation, aggregation), gamma=gamma, beta=beta)
    rewards.discount_weights(0, gamma, beta)  # a bad gamma / beta fails before the engine starts
    rows = read_pairs(input_path)
    if baseline_system is not None and not contrast:
        raise ValueError("--baseline-system is only used with --contrast")
    if contrast:  # every row must be a chat prompt with a system: fail before the engine starts
        from endorm_server.scoring.contrast import check_item

        for i, row in enumerate(rows):
            check_item(row, f"line {i + 1}")

    async def run() -> list[dict[str, Any]]:
        scorer = await Scorer.start(settings)
        try:
            with tqdm(total=len(rows), desc="scoring pairs", unit="pair") as bar:
                return await score_rows(
                    scorer,
                    rows,
                    options,
                    batch_size,
                    bar,
                    step_separator=step_separator,
                    every_aggregation=every,
                    contrast=contrast,
                    baseline_system=baseline_system,
                )
        finally:
            await scorer.shutdown()

    scored = asyncio.run(run())
    out = Path(output_path)
    with open(out, "w", encoding="utf-8") as f:
        for row in scored:
            f.write(json.dumps(row) + "\n")
    if every:
        by_agg = {a: sum(r["correct"][a] for r in scored) for a in scored[0]["correct"]} if scored else {}
        return Summary(pairs=len(scored), correct=by_agg.get("sum", 0), output=out, correct_by_aggregation=by_agg)
    return Summary(pairs=len(scored), correct=sum(r["correct"] for r in scored), output=out)
