"""Issue 20's measurements, raw vs criteria contrast, from per-response scores (no engine).

For the linear aggregations (sum, mean, discounted, loglik_sum, loglik_mean) the contrast score of a
response is exactly its score under the criteria minus its score under the baseline context (same
response tokens, same H; tests/engine/test_contrast.py checks it against the ``--contrast`` path), so
the contrast tables come from runs that scored each response under each context once:

* DSP (Table 2 layout): ``results/real/dsp-promptable.json`` has every response under each domain's
  criteria and under no system (the baseline): contrast row d = row d - row none.
* RM-Bench chat: a run under the correctness criteria (``endorm eval --system ...``) and the committed
  no-system run ``results/real/rm-bench-chat.json``.

Usage: python scripts/contrast_report.py DSP_JSON RMB_BASE_JSON RMB_CRIT_JSON CRITERIA_FILE OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

DOMAINS = ("academy", "business", "entertainment", "literature")
AGGS = ("sum", "mean", "discounted", "loglik_sum", "loglik_mean")
RNG = np.random.default_rng(0)
B = 2000  # bootstrap resamples over queries / prompts


def dsp_wins(s: np.ndarray) -> np.ndarray:
    """s [systems, queries, 5] -> wins [systems, domains, queries] (share of D's 4 pairs won, per query)."""
    out = np.zeros((s.shape[0], len(DOMAINS), s.shape[1]))
    for j in range(len(DOMAINS)):
        others = [k for k in range(5) if k != j]
        out[:, j] = (s[:, :, [j]] > s[:, :, others]).mean(axis=2)
    return out


def ci(per_unit: np.ndarray) -> tuple[float, float, float]:
    """Mean and bootstrap 95% interval over the last axis (queries or prompts)."""
    n = per_unit.shape[-1]
    idx = RNG.integers(0, n, (B, n))
    boots = per_unit[..., idx].mean(axis=-1)
    return float(per_unit.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def diag_stats(w: np.ndarray) -> tuple[int, list[float]]:
    """Columns whose maximum is strictly on the diagonal, and each column's margin diag - best other row."""
    acc = w.mean(axis=-1)  # [rows, domains]
    margins = [float(acc[j, j] - max(acc[r, j] for r in range(acc.shape[0]) if r != j)) for j in range(len(DOMAINS))]
    return sum(m > 0 for m in margins), margins


def dsp(path: Path) -> tuple[str, dict, dict]:
    d = json.loads(path.read_text())
    lines, data, tables = (
        [
            f"## DSP, the paper's Table 2 layout ({d['queries']} queries, seed {d['seed']}, "
            f"{d['pairs_per_cell']} pairs per cell)",
            "",
        ],
        {},
        {},
    )
    for agg in AGGS:
        s = np.asarray(d["scores"][agg])  # [academy, business, entertainment, literature, none][query][response]
        raw, con = dsp_wins(s), dsp_wins(s[:4] - s[4:5])
        tables[agg] = {"raw": raw.mean(-1).tolist(), "contrast": con.mean(-1).tolist()}
        n_raw, m_raw = diag_stats(raw[:4])  # the four criteria rows (the none row has no contrast)
        n_raw5, _ = diag_stats(raw)
        n_con, m_con = diag_stats(con)
        data[agg] = {
            "diagonal_columns_raw_4rows": n_raw,
            "diagonal_columns_raw_5rows": n_raw5,
            "diagonal_columns_contrast": n_con,
            "margins_raw": m_raw,
            "margins_contrast": m_con,
        }
        lines += [f"### `{agg}`", "", "| row \\ data | " + " | ".join(DOMAINS) + " |", "|---" * 5 + "|"]
        for label, w, rows in (("raw", raw, [*DOMAINS, "none"]), ("contrast", con, list(DOMAINS))):
            for r, name in enumerate(rows):
                cells = []
                for j in range(len(DOMAINS)):
                    m, lo, hi = ci(w[r, j])
                    cell = f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                    cells.append(f"**{cell}**" if r == j else cell)
                lines.append(f"| {label}: {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Columns with the maximum strictly on the diagonal: raw {n_raw} of 4 over the 4 criteria rows "
            f"({n_raw5} of 4 with the no-system row too), contrast {n_con} of 4. Margins (diagonal minus the best "
            "other row, points): raw "
            + ", ".join(f"{d_} {100 * m:+.1f}" for d_, m in zip(DOMAINS, m_raw))
            + "; contrast "
            + ", ".join(f"{d_} {100 * m:+.1f}" for d_, m in zip(DOMAINS, m_con)),
            "",
        ]
    return "\n".join(lines), data, tables


def rmb_matrix(scores: dict) -> np.ndarray:
    """[prompts, k, k]: chosen[i] strictly above rejected[j]."""
    c, r = np.asarray(scores["chosen"]), np.asarray(scores["rejected"])
    return c[:, :, None] > r[:, None, :]


def rmb_summary(m: np.ndarray) -> dict[str, tuple[float, float, float]]:
    k = m.shape[1]
    iu, il = np.triu_indices(k, 1), np.tril_indices(k, -1)
    parts = {
        "easy": m[:, il[0], il[1]].mean(1),
        "normal": m[:, range(k), range(k)].mean(1),
        "hard": m[:, iu[0], iu[1]].mean(1),
    }
    parts["average"] = (parts["easy"] + parts["normal"] + parts["hard"]) / 3
    return {name: ci(v.astype(float)) for name, v in parts.items()}


def rmb(base_path: Path, crit_path: Path, criteria: str) -> tuple[str, dict]:
    base, crit = json.loads(base_path.read_text()), json.loads(crit_path.read_text())
    lines = [
        f"## RM-Bench chat ({crit['rows']} prompts, k = {crit['k']}; 95% bootstrap intervals over prompts)",
        "",
        f'Correctness criteria (the system text of the criteria run): "{criteria}"',
        "",
        "| aggregation | reward | easy | normal | hard | average |",
        "|---|---|---|---|---|---|",
    ]
    data = {}
    for agg in AGGS:
        b, c = base["scores"][agg], crit["scores"][agg]
        con = {side: (np.asarray(c[side]) - np.asarray(b[side])).tolist() for side in ("chosen", "rejected")}
        data[agg] = {}
        for label, sc in (("raw, no system", b), ("raw, criteria", c), ("contrast", con)):
            summ = rmb_summary(rmb_matrix(sc))
            data[agg][label] = summ
            lines.append(
                f"| {agg} | {label} | "
                + " | ".join(f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" for m, lo, hi in summ.values())
                + " |"
            )
    return "\n".join(lines) + "\n", data


def heatmaps(tables: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(AGGS), figsize=(3.6 * len(AGGS), 6.4), squeeze=False)
    for col, agg in enumerate(AGGS):
        for row, (label, rows) in enumerate((("raw", [*DOMAINS, "none"]), ("contrast", list(DOMAINS)))):
            ax, t = axes[row][col], np.asarray(tables[agg][label])
            ax.imshow(t, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(4), [d[:5] for d in DOMAINS], fontsize=7)
            ax.set_yticks(range(len(rows)), rows, fontsize=7)
            for i in range(t.shape[0]):
                for j in range(4):
                    ax.text(
                        j,
                        i,
                        f"{100 * t[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if t[i, j] < 0.6 else "black",
                        fontweight="bold" if i == j else None,
                    )
            ax.set_title(f"{agg} ({label})", fontsize=9)
    fig.suptitle("DSP Table 2 layout, SmolLM2-135M-Instruct: raw reward vs criteria contrast", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    dsp_json, base_json, crit_json, crit_file, out = map(Path, argv)
    out.mkdir(parents=True, exist_ok=True)
    criteria = crit_file.read_text().strip()
    dsp_md, dsp_data, tables = dsp(dsp_json)
    rmb_md, rmb_data = rmb(base_json, crit_json, criteria)
    heatmaps(tables, out / "dsp-contrast.png")
    head = [
        "# Criteria contrast vs raw reward (issue 20), SmolLM2-135M-Instruct, float32",
        "",
        "Contrast score = aggregation of r(x, criteria, y) - r(x, baseline, y); baseline = no system (the chat "
        "template's default system turn). Computed here from per-response scores under each context: for these "
        "linear aggregations that equals the `--contrast` path exactly (tests/engine/test_contrast.py). "
        "Cells: accuracy % [95% bootstrap interval over queries]. Diagonal cells bold.",
        "",
        "![heat maps](dsp-contrast.png)",
        "",
    ]
    (out / "contrast.md").write_text("\n".join([*head, dsp_md, rmb_md]))
    (out / "contrast.json").write_text(
        json.dumps({"dsp": dsp_data, "dsp_tables": tables, "rm_bench": rmb_data, "criteria": criteria}, indent=1) + "\n"
    )
    for agg in AGGS:
        dd = dsp_data[agg]
        print(
            f"DSP {agg}: diagonal columns raw {dd['diagonal_columns_raw_4rows']}/4 "
            f"(5 rows: {dd['diagonal_columns_raw_5rows']}), contrast {dd['diagonal_columns_contrast']}/4; "
            f"RM-Bench average: " + ", ".join(f"{k} {100 * v['average'][0]:.1f}" for k, v in rmb_data[agg].items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
