"""Summarise the runs of ``train.py``: ``summary.json``, ``README.md`` and three plots.

    python examples/grpo_endogenous/report.py results/rl

Reads ``before.json``, ``meta.json`` (if present) and ``runs/*.json``; every number in
the report is computed here from those files.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

__all__ = ["summarise", "write_report"]

ARM_ORDER = ("endorm-sum", "endorm-mean", "endorm-discounted", "random", "exact-match")
TRAINED_KEY = "reward"
MONITORS = {  # TRL log key -> label
    "rewards/endorm_sum/mean": "endogenous reward (sum) of the samples",
    "rewards/exact_match/mean": "accuracy of the samples (exact match)",
    "completions/mean_length": "response length (tokens)",
}
EDGE = 5  # steps averaged at the start and end of training


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def _load(out: Path) -> tuple[dict, dict, list[dict]]:
    before = json.loads((out / "before.json").read_text())
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").is_file() else {}
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    return before, meta, runs


def _arms(runs: list[dict]) -> list[str]:
    present = {r["arm"] for r in runs}
    return [a for a in ARM_ORDER if a in present] + sorted(present - set(ARM_ORDER))


def _edge(log: list[dict], key: str, last: bool) -> float | None:
    vals = [e[key] for e in log if key in e]
    part = vals[-EDGE:] if last else vals[:EDGE]
    return statistics.fmean(part) if part else None


def summarise(out: Path) -> dict:
    before, meta, runs = _load(out)
    arms = {}
    for arm in _arms(runs):
        rs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        final = [r["evals"][-1] for r in rs]
        row: dict = {"seeds": [r["seed"] for r in rs], "steps": rs[0]["steps"]}
        for k in ("greedy", "sampled", "greedy_length", "sampled_length"):
            vals = [f[k] for f in final]
            m, sd = _mean_sd(vals)
            row[k] = {
                "before": before[k],
                "after_mean": m,
                "after_sd": sd,
                "after_per_seed": vals,
                "delta_mean": m - before[k],
            }
        row["sampled_by_style_after"] = {
            s: statistics.fmean(f["sampled_by_style"][s] for f in final) for s in before["sampled_by_style"]
        }
        row["greedy_by_style_after"] = {
            s: statistics.fmean(f["greedy_by_style"][s] for f in final) for s in before["greedy_by_style"]
        }
        row["training"] = {
            key: {
                "first": statistics.fmean(_edge(r["log"], key, False) for r in rs),
                "last": statistics.fmean(_edge(r["log"], key, True) for r in rs),
            }
            for key in (TRAINED_KEY, *MONITORS)
            if all(_edge(r["log"], key, False) is not None for r in rs)
        }
        row["wall_s_mean"] = statistics.fmean(r["wall_s"] for r in rs)
        arms[arm] = row
    return {"before": before, "meta": meta, "arms": arms}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _markdown(s: dict) -> str:
    b, meta, arms = s["before"], s["meta"], s["arms"]
    lines = ["# GRPO with the endogenous reward: results", ""]
    if meta:
        a = meta["args"]
        lines += [
            f"Command: `{meta['command']}`  ",
            f"Machine: {meta['machine']} (shared with other jobs); total wall time "
            f"{meta['total_wall_s'] / 60:.1f} min.  ",
            f"Per run: {a['steps']} GRPO steps of {a['prompts_per_step']} prompts x {a['num_generations']} "
            f"completions, lr {a['lr']}, beta 0, temperature 1, training styles {', '.join(a['train_styles'])}.  ",
            f"Held-out evaluation: {meta['eval_questions']} questions ({a['eval_per_style']} per prompt style, "
            f"all five), greedy and {a['eval_samples']} samples per question at temperature 1.",
            "",
        ]
        if meta.get("note"):
            lines += [meta["note"], ""]
    lines += [
        "## Held-out accuracy (exact match of the answer), before -> after, mean over seeds (sd)",
        "",
        "| arm | seeds | greedy before | greedy after | Δ greedy | sampled before | sampled after | Δ sampled | "
        "sampled length before -> after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in arms.items():
        g, sm, ln = r["greedy"], r["sampled"], r["sampled_length"]
        lines.append(
            f"| `{arm}` | {len(r['seeds'])} | {_pct(g['before'])} | {_pct(g['after_mean'])} ({_pct(g['after_sd'])}) | "
            f"{100 * g['delta_mean']:+.1f} | {_pct(sm['before'])} | {_pct(sm['after_mean'])} ({_pct(sm['after_sd'])}) | "
            f"{100 * sm['delta_mean']:+.1f} | {ln['before']:.1f} -> {ln['after_mean']:.1f} |"
        )
    lines += ["", "Per seed (greedy / sampled after training):", ""]
    for arm, r in arms.items():
        per = ", ".join(
            f"seed {sd}: {_pct(g)} / {_pct(x)}"
            for sd, g, x in zip(r["seeds"], r["greedy"]["after_per_seed"], r["sampled"]["after_per_seed"])
        )
        lines.append(f"- `{arm}`: {per}")
    styles = list(b["sampled_by_style"])
    lines += [
        "",
        "## Sampled accuracy by prompt style after training (mean over seeds)",
        "",
        "| arm | " + " | ".join(styles) + " |",
        "|---|" + "---|" * len(styles),
        "| before | " + " | ".join(_pct(b["sampled_by_style"][st]) for st in styles) + " |",
    ]
    for arm, r in arms.items():
        lines.append(f"| `{arm}` | " + " | ".join(_pct(r["sampled_by_style_after"][st]) for st in styles) + " |")
    lines += [
        "",
        f"## Training samples: first {EDGE} steps -> last {EDGE} steps (mean over seeds)",
        "",
        "| arm | trained reward | " + " | ".join(MONITORS.values()) + " |",
        "|---|---|" + "---|" * len(MONITORS),
    ]
    for arm, r in arms.items():
        cells = [
            f"{r['training'][k]['first']:.3g} -> {r['training'][k]['last']:.3g}" if k in r["training"] else "-"
            for k in (TRAINED_KEY, *MONITORS)
        ]
        lines.append(f"| `{arm}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Plots: `training_curve.png` (the trained reward per step, per arm), `monitors.png` (the endogenous "
        "reward, accuracy and length of the training samples in every arm), `accuracy_curve.png` (held-out "
        "accuracy per evaluation). Data: `summary.json`, `runs/*.json`. Discussion: `docs/rl.md`.",
        "",
    ]
    return "\n".join(lines)


def _series(runs: list[dict], key: str) -> tuple[list[int], list[list[float]]]:
    steps = sorted({e["step"] for r in runs for e in r["log"] if key in e})
    per_seed = [
        [next((e[key] for e in r["log"] if e["step"] == st and key in e), float("nan")) for st in steps] for r in runs
    ]
    return steps, per_seed


def _smooth(xs: list[float], k: int = 5) -> list[float]:
    return [statistics.fmean(xs[max(0, i - k + 1) : i + 1]) for i in range(len(xs))]


def _plots(out: Path, runs: list[dict], before: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = _arms(runs)
    colors = {a: f"C{i}" for i, a in enumerate(arms)}

    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.4), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        rs = [r for r in runs if r["arm"] == arm]
        steps, per_seed = _series(rs, TRAINED_KEY)
        for r, ys in zip(rs, per_seed):
            ax.plot(steps, ys, color=colors[arm], alpha=0.3, lw=0.8, label=f"seed {r['seed']}")
        ax.plot(
            steps,
            _smooth([statistics.fmean(v) for v in zip(*per_seed)]),
            color=colors[arm],
            lw=2,
            label="mean over seeds (5-step moving average)",
        )
        ax.set_title(f"{arm}: trained reward")
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean reward of the step's completions")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training_curve.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(MONITORS), figsize=(4.4 * len(MONITORS), 3.4))
    for ax, (key, label) in zip(axes, MONITORS.items()):
        for arm in arms:
            steps, per_seed = _series([r for r in runs if r["arm"] == arm], key)
            if steps:
                ax.plot(steps, _smooth([statistics.fmean(v) for v in zip(*per_seed)]), color=colors[arm], label=arm)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("training samples, every arm (mean over seeds, 5-step moving average)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "monitors.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key in zip(axes, ("greedy", "sampled")):
        for arm in arms:
            rs = [r for r in runs if r["arm"] == arm]
            steps = [e["step"] for e in rs[0]["evals"]]
            vals = [[r["evals"][i][key] for r in rs] for i in range(len(steps))]
            mean = [statistics.fmean(v) for v in vals]
            ax.plot(steps, mean, marker="o", color=colors[arm], label=arm)
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=colors[arm], alpha=0.15)
        ax.set_title(f"held-out accuracy, {key} (band: min-max over seeds)", fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact match")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_curve.png", dpi=110)
    plt.close(fig)


def write_report(out: Path) -> dict:
    summary = summarise(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "README.md").write_text(_markdown(summary))
    _, _, runs = _load(out)
    _plots(out, runs, summary["before"])
    return summary


if __name__ == "__main__":
    write_report(Path(sys.argv[1] if len(sys.argv) > 1 else "results/rl"))
