"""What response length does to each aggregation, on the committed real-data results.

Reads results/real/rm-bench-chat.json and dsp-promptable.json (scores per response), the
data they came from (../shared/data, never committed) and the model's tokenizer, and writes
results/real/analysis.{md,json}: per aggregation, the Pearson and Spearman correlation of
the score margin (chosen - rejected) with the length difference in response tokens, and the
accuracy on pairs where the chosen response is the longer vs the shorter one.

Usage: python scripts/real_eval_analysis.py MODEL_DIR [DATA_DIR] [RESULTS_DIR] [RM_BENCH_STEM] [DSP_STEM]
(stems default to rm-bench-chat and dsp-promptable)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def pair_stats(margin: np.ndarray, dlen: np.ndarray) -> dict:
    longer, shorter = dlen > 0, dlen < 0
    return {
        "pairs": int(len(margin)),
        "pearson_margin_vs_length_diff": float(np.corrcoef(margin, dlen)[0, 1]),
        "spearman_margin_vs_length_diff": spearman(margin, dlen),
        "accuracy": float(np.mean(margin > 0)),
        "accuracy_chosen_longer": float(np.mean(margin[longer] > 0)) if longer.any() else None,
        "accuracy_chosen_shorter": float(np.mean(margin[shorter] > 0)) if shorter.any() else None,
        "pairs_chosen_longer": int(longer.sum()),
        "pairs_chosen_shorter": int(shorter.sum()),
    }


def rm_bench(res: dict, data: Path, n_tokens) -> dict:
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()][: res["rows"]]
    out = {}
    clen = np.array([[n_tokens(t) for t in r["chosen"]] for r in rows])
    rlen = np.array([[n_tokens(t) for t in r["rejected"]] for r in rows])
    out["mean_tokens"] = {"chosen_by_style": clen.mean(0).tolist(), "rejected_by_style": rlen.mean(0).tolist()}
    for agg, s in res["scores"].items():
        c, r = np.asarray(s["chosen"]), np.asarray(s["rejected"])
        margin = (c[:, :, None] - r[:, None, :]).ravel()  # every chosen[i] vs rejected[j]
        dlen = (clen[:, :, None] - rlen[:, None, :]).ravel()
        out[agg] = pair_stats(margin, dlen)
    return out


def dsp(res: dict, data: Path, n_tokens) -> dict:
    raw = json.loads(data.read_text())
    keys = res["response_keys"]
    domains = [k for k in keys if k != "normal"]
    rows = [raw[i] for i in res["query_indices"]]
    lens = np.array([[n_tokens(r["responses"][k]) for k in keys] for r in rows])  # [queries, 5]
    out = {"mean_tokens_by_response": dict(zip(keys, lens.mean(0).tolist()))}
    systems = list(res["tables"][next(iter(res["tables"]))])
    for agg, s in res["scores"].items():
        s = np.asarray(s)  # [system][query][response]
        per = {}
        for si, name in enumerate(systems):
            margins, dl = [], []
            for d in domains:
                j = keys.index(d)
                for k in range(len(keys)):
                    if k != j:
                        margins.append(s[si, :, j] - s[si, :, k])
                        dl.append(lens[:, j] - lens[:, k])
            per[name] = pair_stats(np.concatenate(margins), np.concatenate(dl))
        # which response each system ranks first, and how long it is
        best = s.argmax(axis=2)  # [system, query]
        per["top_choice_share"] = {
            name: {k: float(np.mean(best[si] == ki)) for ki, k in enumerate(keys)} for si, name in enumerate(systems)
        }
        out[agg] = per
    return out


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def markdown(a: dict) -> str:
    out = [
        "# Length and the aggregations (real-data results)",
        "",
        "Margin = score(chosen) - score(rejected) per pair; length difference in response tokens "
        "(chosen - rejected). A positive correlation means the aggregation prefers longer responses "
        "whatever their content.",
        "",
    ]
    if "rm_bench" in a:
        rb = a["rm_bench"]
        out += [
            "## RM-Bench chat",
            "",
            f"Mean response tokens by style (concise, detailed, detailed+markdown): chosen "
            f"{', '.join(f'{x:.0f}' for x in rb['mean_tokens']['chosen_by_style'])}; rejected "
            f"{', '.join(f'{x:.0f}' for x in rb['mean_tokens']['rejected_by_style'])}.",
            "",
            "| aggregation | pairs | accuracy | Pearson(margin, dlen) | Spearman | acc. chosen longer (n) | "
            "acc. chosen shorter (n) |",
            "|---|---|---|---|---|---|---|",
        ]
        for agg, s in rb.items():
            if agg == "mean_tokens":
                continue
            out.append(
                f"| {agg} | {s['pairs']} | {100 * s['accuracy']:.1f} | {fmt(s['pearson_margin_vs_length_diff'])} | "
                f"{fmt(s['spearman_margin_vs_length_diff'])} | {100 * s['accuracy_chosen_longer']:.1f} "
                f"({s['pairs_chosen_longer']}) | {100 * s['accuracy_chosen_shorter']:.1f} "
                f"({s['pairs_chosen_shorter']}) |"
            )
        out.append("")
    if "dsp" in a:
        d = a["dsp"]
        out += [
            "## DSP",
            "",
            "Mean response tokens: " + ", ".join(f"{k} {v:.0f}" for k, v in d["mean_tokens_by_response"].items()) + ".",
            "",
            "Pearson correlation of margin and length difference over each row's 4 x 4 x queries pairs, and "
            "the share of queries where each response is ranked first:",
            "",
        ]
        for agg, per in d.items():
            if agg == "mean_tokens_by_response":
                continue
            out += [
                f"### `{agg}`",
                "",
                "| system | Pearson(margin, dlen) | Spearman | ranked first: "
                + " / ".join(per["top_choice_share"][next(iter(per["top_choice_share"]))])
                + " |",
                "|---|---|---|---|",
            ]
            for name, s in per.items():
                if name == "top_choice_share":
                    continue
                share = per["top_choice_share"][name]
                out.append(
                    f"| {name} | {fmt(s['pearson_margin_vs_length_diff'])} | "
                    f"{fmt(s['spearman_margin_vs_length_diff'])} | "
                    + " / ".join(f"{100 * v:.0f}%" for v in share.values())
                    + " |"
                )
            out.append("")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    from transformers import AutoTokenizer

    model = argv[0]
    data = Path(argv[1] if len(argv) > 1 else "../shared/data")
    results = Path(argv[2] if len(argv) > 2 else "results/real")
    rmb_stem = argv[3] if len(argv) > 3 else "rm-bench-chat"
    dsp_stem = argv[4] if len(argv) > 4 else "dsp-promptable"
    tok = AutoTokenizer.from_pretrained(model)

    def n_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    a = {}
    if (results / f"{rmb_stem}.json").exists():
        a["rm_bench"] = rm_bench(
            json.loads((results / f"{rmb_stem}.json").read_text()), data / "rm-bench-chat.jsonl", n_tokens
        )
    if (results / f"{dsp_stem}.json").exists():
        a["dsp"] = dsp(json.loads((results / f"{dsp_stem}.json").read_text()), data / "dsp-test.json", n_tokens)
    (results / "analysis.json").write_text(json.dumps(a, indent=1) + "\n")
    (results / "analysis.md").write_text(markdown(a))
    print(f"wrote {results / 'analysis.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
