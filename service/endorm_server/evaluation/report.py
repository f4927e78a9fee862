"""``endorm eval`` reports: markdown, JSON and a PNG heat map."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from endorm_server.evaluation.harness import EvalResult

SUMMARY_KEYS = ("easy", "normal", "hard", "average")


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def to_json(results: Mapping[str, EvalResult], meta: Mapping[str, Any]) -> dict[str, Any]:
    return {**meta, "results": {agg: r.to_dict() for agg, r in results.items()}}


def markdown(
    results: Mapping[str, EvalResult], meta: Mapping[str, Any], *, title: str = "Reward model evaluation"
) -> str:
    aggs = list(results)
    first = next(iter(results.values()))
    group_word = "domain" if first.format == "rm-bench" else "subset"
    out = [f"# {title}", ""]
    for key in (
        "model",
        "input",
        "format",
        "k",
        "rows",
        "system",
        "prompt_mode",
        "backend",
        "alpha",
        "gamma",
        "beta",
        "terminal",
    ):
        if meta.get(key) is not None:
            out.append(f"- {key}: `{meta[key]}`")
    out += [
        "",
        "Accuracy (%) per "
        + group_word
        + "; chosen must score strictly above rejected (ties are wrong)."
        + (" With k responses per side, a row counts k x k comparisons." if first.k > 1 else ""),
        "",
    ]
    rows = [[g.name, g.rows, *(pct(results[a].groups[i].accuracy) for a in aggs)] for i, g in enumerate(first.groups)]
    rows.append(["**all (pooled)**", first.overall.rows, *(f"**{pct(results[a].overall.accuracy)}**" for a in aggs)])
    rows.append([f"mean over {group_word}s", "", *(pct(results[a].mean_over_groups) for a in aggs)])
    out += [md_table([group_word, "rows", *aggs], rows), ""]
    if first.k >= 2:
        out += [
            f"RM-Bench summary (%): hard = upper-right triangle of the {first.k} x {first.k} matrix (plainer chosen "
            "vs fancier rejected), normal = diagonal, easy = lower-left triangle.",
            "",
        ]
        srows = [[a, *(pct((results[a].overall.summary or {})[key]) for key in SUMMARY_KEYS)] for a in aggs]
        out += [md_table(["aggregation", *SUMMARY_KEYS], srows), ""]
        for a in aggs:
            m = results[a].overall.matrix or []  # k >= 2 has a matrix
            out += [f"Accuracy matrix, `{a}` (row i = chosen[i], column j = rejected[j], %):", ""]
            out += [
                md_table(["chosen \\ rejected", *range(first.k)], [[i, *map(pct, row)] for i, row in enumerate(m)]),
                "",
            ]
    return "\n".join(out)


def heatmap(
    ax,
    values,
    row_labels,
    col_labels,
    *,
    title: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
    fmt: str = "{:.0%}",
    xlabel: str = "",
    ylabel: str = "",
) -> None:
    """Draw one annotated heat map on a matplotlib axis."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    im = ax.imshow(v, cmap="RdYlGn", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=[str(c) for c in col_labels], rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=[str(r) for r in row_labels])
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            if not np.isnan(v[i, j]):
                ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return im


def write_png(results: Mapping[str, EvalResult], path: str | Path, *, title: str = "") -> Path:
    """Accuracy per group x aggregation; with k >= 2 also the k x k matrix per aggregation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggs = list(results)
    first = next(iter(results.values()))
    panels = 1 + (len(aggs) if first.k >= 2 else 0)
    n_groups = len(first.groups) + 1
    fig, axes = plt.subplots(
        1, panels, figsize=(3.2 + 1.1 * len(aggs) + 3.6 * (panels - 1), 1.5 + 0.4 * n_groups), squeeze=False
    )
    values = [[results[a].groups[i].accuracy for a in aggs] for i in range(len(first.groups))]
    values.append([results[a].overall.accuracy for a in aggs])
    heatmap(axes[0][0], values, [g.name for g in first.groups] + ["all"], aggs, title="accuracy")
    for p, a in enumerate(aggs if first.k >= 2 else [], start=1):
        s = results[a].overall.summary or {}
        heatmap(
            axes[0][p],
            results[a].overall.matrix,
            [f"chosen {i}" for i in range(first.k)],
            [f"rejected {j}" for j in range(first.k)],
            title=f"{a}: easy {pct(s['easy'])} / normal {pct(s['normal'])} / hard {pct(s['hard'])}",
        )
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(
    results: Mapping[str, EvalResult],
    meta: Mapping[str, Any],
    out_dir: str | Path,
    name: str,
    scores: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.json`` (with per-row scores if given) and ``<name>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / f"{name}.md", "json": out / f"{name}.json", "png": out / f"{name}.png"}
    paths["md"].write_text(markdown(results, meta, title=f"Reward model evaluation: {name}") + "\n", encoding="utf-8")
    data = to_json(results, meta)
    if scores is not None:
        data["scores"] = scores
    paths["json"].write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if have_matplotlib():
        write_png(results, paths["png"], title=f"{name} ({meta.get('model', '')})")
    else:
        del paths["png"]
        print("note: no PNG heat map: matplotlib is not installed (pip install 'endorm-server[eval]')", file=sys.stderr)
    return paths


def have_matplotlib() -> bool:
    """The heat maps are the one part of ``endorm eval`` that needs matplotlib (the ``eval`` extra)."""
    return importlib.util.find_spec("matplotlib") is not None
