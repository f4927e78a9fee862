"""Summary of the GRPO criteria arms (issue 20): share of samples answering in words and accuracy, before/after.

Usage: python scripts/contrast_rl_summary.py results/rl-criteria
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(out: Path) -> int:
    before = json.loads((out / "before.json").read_text())
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    lines = [
        "# GRPO criteria arms: policy prompted without a style, reward with the words criteria",
        "",
        "Held-out evaluation, prompts without a style (`none`, 16 questions x 2 samples at temperature 1); "
        "training monitor: share of the step's 32 samples whose answer is in words (first 5 / last 5 steps).",
        "",
        "| arm | seed | words share (eval, none) before -> after | sampled acc (none) | greedy acc (all) "
        "| words share in training, first -> last |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        after = r["evals"][-1]
        ws0 = (before.get("words_share_by_style") or {}).get("none", float("nan"))
        ws1 = (after.get("words_share_by_style") or {}).get("none", float("nan"))
        key = next((k for k in r["log"][0] if "words_share" in k and k.endswith("/mean")), None)
        tr = [e[key] for e in r["log"] if key in e] if key else []
        t0, t1 = (float(np.mean(tr[:5])), float(np.mean(tr[-5:]))) if tr else (float("nan"),) * 2
        s0, s1 = before["sampled_by_style"]["none"], after["sampled_by_style"]["none"]
        lines.append(
            f"| {r['arm']} | {r['seed']} | {100 * ws0:.1f} -> {100 * ws1:.1f} | {100 * s0:.1f} -> "
            f"{100 * s1:.1f} | {100 * before['greedy']:.1f} -> {100 * after['greedy']:.1f} | "
            f"{100 * t0:.1f} -> {100 * t1:.1f} |"
        )
        d = summary.setdefault(
            r["arm"], {"words_after": [], "train_words_last": [], "sampled_none_after": [], "greedy_after": []}
        )
        d["words_after"].append(ws1)
        d["train_words_last"].append(t1)
        d["sampled_none_after"].append(s1)
        d["greedy_after"].append(after["greedy"])
    lines += ["", "Means over seeds:", ""]
    for arm, d in summary.items():
        lines.append(
            f"- {arm}: "
            + ", ".join(f"{k} {100 * np.mean(v):.1f}" for k, v in d.items())
            + f" ({len(d['words_after'])} seeds)"
        )
    (out / "README.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
