"""Score a preference dataset through a backend and compute its accuracies."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from endorm_server.evaluation.backends import Backend
from endorm_server.evaluation.cache import ScoreCache
from endorm_server.evaluation.harness import Dataset, EvalResult, PreferenceRow, evaluate
from endorm_server.inputs.step_spans import split_on_separator

PROMPT_MODES = ("chat", "raw")


def prompt_fields(row: PreferenceRow, *, system: str | None = None, prompt_mode: str = "chat") -> dict[str, Any]:
    """The request's prompt part for a row.

    ``chat`` (default): a text prompt becomes one user turn rendered with the model's chat
    template (as RM-Bench and RewardBench score chat models); ``system`` (the criteria)
    overrides the row's own. ``raw``: the prompt text is tokenized as is (no template,
    no system text).
    """
    sys_text = system if system is not None else row.system
    if prompt_mode == "raw":
        if not isinstance(row.prompt, str):
            raise ValueError("prompt_mode 'raw' needs text prompts, not chat messages")
        if sys_text is not None:
            raise ValueError("a system text needs chat prompts (prompt_mode 'chat')")
        return {"prompt": row.prompt}
    if prompt_mode != "chat":
        raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {prompt_mode!r}")
    messages = [{"role": "user", "content": row.prompt}] if isinstance(row.prompt, str) else list(row.prompt)
    out: dict[str, Any] = {"messages": messages}
    if sys_text:
        out["system"] = sys_text
    return out


def response_fields(text: str, step_separator: str | None = None) -> dict[str, Any]:
    """``response``, or with a separator ``steps`` (an answer without it is one step)."""
    if step_separator is None or not text:
        return {"response": text}
    return {"steps": split_on_separator(text, step_separator, required=False)}


def build_items(
    dataset: Dataset, *, system: str | None = None, prompt_mode: str = "chat", step_separator: str | None = None
) -> list[dict[str, Any]]:
    """Every response of every row, in order: row 0's chosen[0..k-1], rejected[0..k-1], row 1's ..."""
    items = []
    for row in dataset.rows:
        prompt = prompt_fields(row, system=system, prompt_mode=prompt_mode)
        items += [{**prompt, **response_fields(text, step_separator)} for text in (*row.chosen, *row.rejected)]
    return items


async def score_items(
    backend: Backend,
    items: Sequence[dict[str, Any]],
    aggregations: Sequence[str],
    *,
    batch_size: int = 32,
    concurrency: int = 4,
    progress=None,
    cache: ScoreCache | None = None,
) -> dict[str, list[float]]:
    """Scores of all items per aggregation; ``concurrency`` batches in flight at once.

    With a ``cache``, items already in it are not scored again and every finished batch is
    appended to it at once (an interrupted run picks up where it stopped).
    """
    out = {agg: [float("nan")] * len(items) for agg in aggregations}
    todo = []
    for i, item in enumerate(items):
        hit = cache.get(item, aggregations) if cache is not None else None
        if hit is None:
            todo.append(i)
        else:
            for agg in aggregations:
                out[agg][i] = hit[agg]
    if progress is not None and len(todo) < len(items):
        progress.update(len(items) - len(todo))
    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    limit = asyncio.Semaphore(concurrency)

    async def one(idx: list[int]) -> None:
        async with limit:
            scores = await backend.score([items[i] for i in idx], aggregations)
        for agg in aggregations:
            for i, s in zip(idx, scores[agg]):
                out[agg][i] = s
        if cache is not None:
            cache.put([items[i] for i in idx], scores)
        if progress is not None:
            progress.update(len(idx))

    await asyncio.gather(*(one(c) for c in chunks))
    return out


async def evaluate_dataset(
    backend: Backend,
    dataset: Dataset,
    aggregations: Sequence[str],
    *,
    system: str | None = None,
    prompt_mode: str = "chat",
    step_separator: str | None = None,
    batch_size: int = 32,
    concurrency: int = 4,
    progress: bool = True,
    desc: str = "scoring",
    cache: ScoreCache | None = None,
) -> tuple[dict[str, EvalResult], dict[str, dict[str, list[list[float]]]]]:
    """Accuracies per aggregation, and the scores: ``{agg: {"chosen": [rows][k], "rejected": [rows][k]}}``.

    One scoring pass in process (every aggregation from the same per-token rewards).
    """
    from tqdm import tqdm

    items = build_items(dataset, system=system, prompt_mode=prompt_mode, step_separator=step_separator)
    k = dataset.k
    with tqdm(total=len(items), desc=desc, unit="resp", disable=not progress, dynamic_ncols=True) as bar:
        scores = await score_items(
            backend, items, aggregations, batch_size=batch_size, concurrency=concurrency, progress=bar, cache=cache
        )
    results, per_row = {}, {}
    for agg in aggregations:
        s = scores[agg]
        chosen = [s[n * 2 * k : n * 2 * k + k] for n in range(len(dataset.rows))]
        rejected = [s[n * 2 * k + k : (n + 1) * 2 * k] for n in range(len(dataset.rows))]
        results[agg] = evaluate(dataset, chosen, rejected, aggregation=agg)
        per_row[agg] = {"chosen": chosen, "rejected": rejected}
    return results, per_row
