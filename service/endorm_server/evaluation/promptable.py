"""The promptable-reward table (the endogenous-reward paper's Table 2) on DSP.

DSP (Cheng et al. 2023, Domain-Specific Preference) gives each query five responses, one
written for each of the domains academy, business, entertainment, literature and one
"normal". For a data domain D the D response is preferred over each of the other four
(4 pairs per query). The table scores every domain's pairs under the system prompt
(criteria) of each domain, plus one row without a system prompt: a promptable reward
puts the highest accuracy of each column on the diagonal.

Every (query, system) scores the five responses once; all aggregations come from that
pass. The same queries (a fixed seeded subset) and the same criteria texts serve every
cell. Run: ``python -m endorm_server.evaluation.promptable DSP.json --queries 60 --model DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

DOMAINS = ("academy", "business", "entertainment", "literature")
RESPONSE_KEYS = (*DOMAINS, "normal")
NO_SYSTEM = "none"

# One criteria text per domain, used for every row of the table (and written in the report).
CRITERIA: dict[str, str] = {
    "academy": "You are a strict reviewer for an academic journal. The best answer is written in an academic "
    "style: formal, precise and objective, with technical terminology, careful reasoning and a "
    "scholarly, well-structured explanation.",
    "business": "You are a business consultant. The best answer is written for business: professional and "
    "practical, focused on markets, customers, costs, profit and strategy, with concrete, "
    "actionable recommendations.",
    "entertainment": "You are an entertainment writer. The best answer is entertaining: casual, humorous and "
    "lively, playful and engaging, with jokes, fun facts and pop-culture references.",
    "literature": "You are a literary critic. The best answer is written as literature and art: vivid, "
    "imaginative and expressive, with rich imagery, metaphor, emotion and a poetic voice.",
}


@dataclass(frozen=True)
class DspQuery:
    index: int  # position in the source file
    query: str
    responses: Mapping[str, str]


def read_dsp(path: str | Path) -> tuple[list[DspQuery], list[int]]:
    """DSP's JSON list of ``{"query", "responses": {academy, business, entertainment, literature, normal}}``.

    Returns the usable rows and the indices of rows skipped because a response is empty
    (the test split has one: row 60's "normal" response is ""); a malformed row is an error.
    """
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: expected a non-empty JSON list of DSP rows")
    out, skipped = [], []
    for i, row in enumerate(raw):
        resp = row.get("responses") if isinstance(row, dict) else None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("query"), str)
            or not isinstance(resp, dict)
            or any(not isinstance(resp.get(k), str) for k in RESPONSE_KEYS)
        ):
            raise ValueError(
                f"{path}: row {i}: needs 'query' and 'responses' with texts for {', '.join(RESPONSE_KEYS)}"
            )
        if not row["query"].strip() or any(not resp[k].strip() for k in RESPONSE_KEYS):
            skipped.append(i)
            continue
        out.append(DspQuery(index=i, query=row["query"], responses={k: resp[k] for k in RESPONSE_KEYS}))
    return out, skipped


def subset(rows: Sequence[DspQuery], n: int | None, seed: int) -> list[DspQuery]:
    """The first ``n`` queries of a seeded permutation (all of them when n is None).

    Subsets are nested: the first 30 of ``--queries 60`` are ``--queries 30``; scoring goes
    query by query in this order, so an interrupted run's cache holds a complete smaller table.
    """
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    return [rows[i] for i in order[: len(rows) if n is None else n]]


def systems(names: Sequence[str]) -> dict[str, str | None]:
    """Table rows: the criteria text of each domain, then the no-system row."""
    return {**{d: CRITERIA[d] for d in names}, NO_SYSTEM: None}


def build_items(rows: Sequence[DspQuery], sys_texts: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """Order: system-major, then query, then the five responses in RESPONSE_KEYS order (see
    :func:`query_major` for the order they are scored in)."""
    items = []
    for text in sys_texts.values():
        for q in rows:
            prompt: dict[str, Any] = {"messages": [{"role": "user", "content": q.query}]}
            if text is not None:
                prompt["system"] = text
            items += [{**prompt, "response": q.responses[k]} for k in RESPONSE_KEYS]
    return items


def query_major(n_systems: int, n_queries: int) -> list[int]:
    """Indices of :func:`build_items` taken query by query (all systems of query 0 first)."""
    k = len(RESPONSE_KEYS)
    return [(si * n_queries + q) * k + r for q in range(n_queries) for si in range(n_systems) for r in range(k)]


def table(scores: Sequence[float], n_queries: int, sys_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``acc[system][D]`` = fraction of the 4 pairs per query (D's response vs each other one)
    where D's response scores strictly higher (ties are wrong)."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(sys_names), n_queries, len(RESPONSE_KEYS))
    out: dict[str, dict[str, float]] = {}
    for si, name in enumerate(sys_names):
        row = {}
        for d in DOMAINS:
            j = RESPONSE_KEYS.index(d)
            others = [k for k in range(len(RESPONSE_KEYS)) if k != j]
            per_query = s[si]  # [queries, 5]
            with np.errstate(invalid="ignore"):
                wins = per_query[:, [j]] > per_query[:, others]  # [queries, 4]; NaN compares False
            row[d] = float(wins.mean())
        out[name] = row
    return out


def markdown(
    tables: Mapping[str, Mapping[str, Mapping[str, float]]],
    meta: Mapping[str, Any],
    sys_texts: Mapping[str, str | None],
) -> str:
    from endorm_server.evaluation.report import md_table, pct

    out = ["# Promptable reward on DSP (the paper's Table 2 layout)", ""]
    for key in (
        "model",
        "input",
        "queries",
        "seed",
        "usable_rows",
        "skipped_rows_with_an_empty_text",
        "pairs_per_cell",
        "backend",
        "alpha",
        "gamma",
        "beta",
        "terminal",
        "contrast",
        "baseline_system",
    ):
        if meta.get(key) is not None:
            out.append(f"- {key}: `{meta[key]}`")
    out += [
        "",
        "Accuracy (%): row = system prompt (criteria) given to the reward, column = data domain D "
        "(D's response must score strictly above each of the other four responses to the same query). "
        "A promptable reward has the highest value of each column on the diagonal (bold); † marks an "
        "off-diagonal cell that reaches its column's maximum.",
        "",
    ]
    for agg, t in tables.items():
        rows = []
        for name in t:
            cells = []
            for d in DOMAINS:
                best = max(t[r][d] for r in t)
                v = pct(t[name][d])
                cells.append(f"**{v}**" if name == d else (f"{v} †" if t[name][d] >= best else v))
            rows.append([name, *cells, pct(float(np.mean(list(t[name].values()))))])
        out += [f"## `{agg}`", "", md_table(["system \\ data", *DOMAINS, "mean"], rows), ""]
        diag = [t[d][d] for d in DOMAINS if d in t]
        none = f"no-system mean {pct(float(np.mean(list(t[NO_SYSTEM].values()))))}; " if NO_SYSTEM in t else ""
        out += [
            f"Diagonal mean {pct(float(np.mean(diag)))}; {none}columns whose maximum is on the diagonal: "
            f"{sum(t[d][d] > max(t[r][d] for r in t if r != d) for d in DOMAINS if d in t)} of {len(diag)} "
            "(strictly above every other row).",
            "",
        ]
    out += ["## Criteria texts (the system prompts of the rows)", ""]
    out += [
        f"- **{name}**: " + (f'"{text}"' if text else "no system prompt (the chat template's own default)")
        for name, text in sys_texts.items()
    ]
    return "\n".join(out) + "\n"


def write_png(tables: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from endorm_server.evaluation.report import heatmap

    aggs = list(tables)
    fig, axes = plt.subplots(1, len(aggs), figsize=(4.2 * len(aggs), 3.6), squeeze=False)
    for ax, agg in zip(axes[0], aggs):
        t = tables[agg]
        heatmap(
            ax,
            [[t[r][d] for d in DOMAINS] for r in t],
            list(t),
            list(DOMAINS),
            title=agg,
            xlabel="data domain",
            ylabel="system prompt",
        )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from endorm_server.evaluation.command import add_scoring_arguments

    p.add_argument("input", help="DSP test split (JSON list of {query, responses})")
    p.add_argument("-o", "--output-dir", default="eval-results")
    p.add_argument("--name", default="dsp-promptable")
    p.add_argument("--queries", type=int, default=60, help="size of the fixed seeded query subset (default 60)")
    p.add_argument("--seed", type=int, default=0)
    add_scoring_arguments(p)
    p.add_argument("--server", default=None, help="score through a running endorm server instead of in process")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cache", default=None, help="per-response score file (default <output-dir>/<name>.scores.jsonl)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="start no engine: report from the cache alone (an error if a score is missing)",
    )


async def _score(args, settings, items, aggregations):
    from tqdm import tqdm

    from endorm_server.evaluation.command import cached_backend, open_cache, start_backend
    from endorm_server.evaluation.runner import score_items

    backend = cached_backend(args, settings) if args.cached_only else await start_backend(args, settings)
    try:
        cache = open_cache(args, backend, args.name)
        with tqdm(
            total=len(items), desc="scoring DSP", unit="resp", disable=args.no_progress, dynamic_ncols=True
        ) as bar:
            scores = await score_items(
                backend,
                items,
                aggregations,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                progress=bar,
                cache=cache,
            )
        return backend.model_name, scores
    finally:
        await backend.close()


def run(args: argparse.Namespace, settings) -> int:
    from endorm_server.evaluation.command import discount_of, expand_aggregations

    try:
        if args.queries < 1 or args.batch_size < 1 or args.concurrency < 1:
            raise ValueError("--queries, --batch-size and --concurrency must be >= 1")
        aggregations = expand_aggregations(args.aggregation)
        discount_of(args)
        usable, skipped = read_dsp(args.input)
        rows = subset(usable, args.queries, args.seed)
        sys_texts = systems(DOMAINS)
        if args.contrast:  # each criteria row against its baseline (the no-system row's context by default)
            sys_texts = {k: v for k, v in sys_texts.items() if v is not None}
        items = build_items(rows, sys_texts)
        order = query_major(len(sys_texts), len(rows))
        model, ordered = asyncio.run(_score(args, settings, [items[i] for i in order], aggregations))
        scores = {agg: [float("nan")] * len(items) for agg in aggregations}
        for agg in aggregations:
            for pos, i in enumerate(order):
                scores[agg][i] = ordered[agg][pos]
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"promptable: error: {exc}", file=sys.stderr)
        return 2
    names = list(sys_texts)
    tables = {agg: table(scores[agg], len(rows), names) for agg in aggregations}
    meta = {
        "model": model,
        "input": str(args.input),
        "queries": len(rows),
        "seed": args.seed,
        "usable_rows": len(usable),
        "skipped_rows_with_an_empty_text": skipped,
        "query_indices": [q.index for q in rows],
        "pairs_per_cell": 4 * len(rows),
        "backend": f"server {args.server}" if args.server else f"in-process ({settings.engine})",
        "alpha": None if args.server else settings.alpha,
        "gamma": args.gamma,
        "beta": args.beta,
        "terminal": args.terminal,
        "criteria": sys_texts,
        "contrast": args.contrast or None,
        "baseline_system": args.baseline_system,
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = np.asarray([scores[a] for a in aggregations]).reshape(len(aggregations), len(names), len(rows), -1)
    data = {
        **meta,
        "tables": tables,
        "response_keys": list(RESPONSE_KEYS),
        "scores": {a: s[i].tolist() for i, a in enumerate(aggregations)},
    }  # [system][query][response]
    (out / f"{args.name}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    (out / f"{args.name}.md").write_text(markdown(tables, meta, sys_texts), encoding="utf-8")
    from endorm_server.evaluation.report import have_matplotlib

    if have_matplotlib():
        write_png(tables, out / f"{args.name}.png", f"DSP promptable reward, {len(rows)} queries ({model})")
    for agg, t in tables.items():
        print(f"{agg}: diagonal " + ", ".join(f"{d} {100 * t[d][d]:.1f}" for d in DOMAINS))
    print(f"wrote {out / args.name}.md/.json/.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    from endorm_server.flags import add_settings_flags, configure_logging, settings_from_args

    p = argparse.ArgumentParser(
        prog="python -m endorm_server.evaluation.promptable", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    add_settings_flags(p)
    args = p.parse_args(argv)
    settings = settings_from_args(args, p)
    configure_logging("warning" if settings.log_level == "info" else settings.log_level)
    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
