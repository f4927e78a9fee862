#!/usr/bin/env python
"""The demo model's results: correct-vs-wrong accuracy and the promptable-reward table.

Generates the held-out preference sets of the demo task
(``service/endorm_server/evaluation/demo_task.py``), scores them with one in-process engine (vLLM by
default) and writes ``results/demo/``:

- ``data/correctness.jsonl`` (RM-Bench form, k = 3: the right answer vs a wrong one in
  three styles; domains = operand size x how wrong) and ``data/style.jsonl``
  (RewardBench form: subsets = criteria; the right answer in the asked-for style vs
  the right answer in another style);
- ``correctness.{md,json,png}``: the ``endorm eval`` report of the first set;
- ``promptable.png`` and ``README.md`` / ``results.json``: both tables: accuracy of the
  endogenous reward (``sum``, and its per-token ``mean``) next to the log-likelihood
  baselines from the same forward pass and chance; and rows = system prompt
  (criteria) x columns = preference set by criterion.

    .venv/bin/python scripts/demo_results.py          # a few minutes on a CPU

Same files with ``endorm eval``: ``endorm eval results/demo/data/correctness.jsonl
--aggregation sum --aggregation loglik_mean ...`` and, per row of the promptable table,
``endorm eval results/demo/data/style.jsonl --system "<criteria>"``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from endorm_server.evaluation import demo_task  # noqa: E402
from endorm_server.evaluation.demo_task import STYLES, SYSTEM_PROMPTS  # noqa: E402
from endorm_server.evaluation.harness import parse_rows  # noqa: E402
from endorm_server.evaluation.report import heatmap, md_table, pct, write_reports  # noqa: E402

AGGREGATIONS = ("sum", "mean", "loglik_sum", "loglik_mean")
LABEL = {
    "sum": "endogenous `sum` (paper)",
    "mean": "endogenous `mean`",
    "loglik_sum": "`loglik_sum`",
    "loglik_mean": "`loglik_mean`",
}
ROWS = (None, *STYLES)  # system prompt per row of the promptable table (None: no system turn)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "service" / "models" / "demo"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "demo")
    p.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    p.add_argument("--per-domain", type=int, default=100, help="rows per correctness domain")
    p.add_argument("--per-subset", type=int, default=100, help="pairs per style subset")
    return p.parse_args(argv)


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


async def score_all(args, correctness, style):
    from endorm_server.config import Settings
    from endorm_server.evaluation.backends import InProcessBackend
    from endorm_server.evaluation.runner import evaluate_dataset

    settings = Settings(
        model=args.model,
        engine=args.engine,
        dtype="float32",
        max_model_len=256,
        max_num_batched_tokens=4096,
        kv_cache_gb=1,
        gpu_memory_utilization=0.05,
        enforce_eager=True,
        log_level="warning",
    )
    backend = await InProcessBackend.start(settings)
    try:
        corr, corr_scores = await evaluate_dataset(
            backend, correctness, AGGREGATIONS, batch_size=64, desc="correctness set"
        )
        prompt_table = {}
        for row in ROWS:
            system = SYSTEM_PROMPTS[row] if row else None
            res, _ = await evaluate_dataset(
                backend, style, AGGREGATIONS, system=system, batch_size=64, desc=f"style set, system: {row or 'none'}"
            )
            prompt_table[row or "none"] = res
        return corr, corr_scores, prompt_table
    finally:
        await backend.close()


def promptable_png(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r or "none" for r in ROWS]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, agg in zip(axes, ("sum", "loglik_mean")):
        values = [[{g.name: g.accuracy for g in table[r][agg].groups}[c] for c in STYLES] for r in rows]
        heatmap(
            ax,
            values,
            [f"system: {r}" for r in rows],
            [f"set: {c}" for c in STYLES],
            title=f"promptable reward, {agg}: accuracy",
            xlabel="preference set (chosen follows)",
            ylabel="system prompt (criteria)",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reading_notes(corr, table, rows) -> str:
    """What the tables say, computed from them (so the note stays true when they change)."""
    gap = max(
        abs(x.accuracy - y.accuracy)
        for x, y in zip(
            corr["sum"].groups + [corr["sum"].overall], corr["loglik_sum"].groups + [corr["loglik_sum"].overall]
        )
    )
    for r in rows:
        gap = max(
            gap,
            max(abs(x.accuracy - y.accuracy) for x, y in zip(table[r]["sum"].groups, table[r]["loglik_sum"].groups)),
        )
    same = "identical in every cell here" if gap == 0 else f"within {100 * gap:.1f} points here (near-ties)"
    by_acc = sorted(corr["sum"].groups, key=lambda g: g.accuracy)
    s_sum, s_llm = corr["sum"].overall.summary, corr["loglik_mean"].overall.summary
    none = {g.name: g.accuracy for g in table["none"]["sum"].groups}
    diag_sum = [{g.name: g.accuracy for g in table[c]["sum"].groups}[c] for c in STYLES]
    diag_llm = [{g.name: g.accuracy for g in table[c]["loglik_mean"].groups}[c] for c in STYLES]
    return "\n".join(
        [
            "- **Endogenous `sum` = `loglik_sum` here, by construction.** With terminal value 0 and no discount, "
            "`sum_h r_h = alpha * sum_h log pi(a_h|s_h) + V(s_0)` and `V(s_0)` is the same for every response to one "
            f"prompt, so the two rank every pair alike: {same}. They part ways only with a discount, "
            "`terminal: bootstrap`, or when responses to different prompts are compared.",
            f"- **Right vs wrong.** The reward separates right from wrong answers far above chance: "
            f"{pct(corr['sum'].overall.accuracy)}% over all comparisons, from {pct(by_acc[-1].accuracy)}% "
            f"({by_acc[-1].name}) down to {pct(by_acc[0].accuracy)}% ({by_acc[0].name}). It is best where the model "
            "itself computes well (see the greedy accuracy in the model card): a wrong final number after correct "
            "working is very unlikely under the model; a bare 2-digit answer is a guess it is less sure of.",
            f"- **Style bias (RM-Bench easy / normal / hard).** `sum`: {pct(s_sum['easy'])} / {pct(s_sum['normal'])} / "
            f"{pct(s_sum['hard'])}; `loglik_mean`: {pct(s_llm['easy'])} / {pct(s_llm['normal'])} / {pct(s_llm['hard'])}. "
            "The per-token average rewards long answers full of near-certain working tokens, so a bare right answer "
            "loses to a wrong answer with working (the hard triangle); the summed reward does not have that bias.",
            f"- **Promptable.** With `sum` the diagonal is {', '.join(pct(d) for d in diag_sum)} "
            f"(`loglik_mean`: {', '.join(pct(d) for d in diag_llm)}): the system prompt decides which style wins. "
            f"With no system prompt the model prefers answers with working ({pct(none['digits_working'])} and "
            f"{pct(none['words_working'])} on those sets vs {pct(none['digits'])} and {pct(none['words'])} on the bare "
            "ones): it was trained on the four styles equally often, but is surer of the content of a worked answer.",
            "- Scale: a 1.3M-parameter model on its own narrow task, so these numbers show the mechanism working, "
            "not what a real model scores on RM-Bench (the paper: 70.2% for Qwen2.5-7B-Instruct).",
        ]
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    corr_rows = demo_task.correctness_set(args.per_domain)
    style_rows = demo_task.style_set(args.per_subset)
    write_jsonl(args.out / "data" / "correctness.jsonl", corr_rows)
    write_jsonl(args.out / "data" / "style.jsonl", style_rows)
    correctness = parse_rows(corr_rows, source="correctness.jsonl")
    style = parse_rows(style_rows, source="style.jsonl")

    corr, corr_scores, table = asyncio.run(score_all(args, correctness, style))
    model_name = Path(args.model).name
    meta = {
        "model": model_name,
        "input": "results/demo/data/correctness.jsonl",
        "format": "rm-bench",
        "k": 3,
        "rows": len(corr_rows),
        "prompt_mode": "chat",
        "backend": f"in-process ({args.engine}, float32)",
    }
    write_reports(corr, meta, args.out, "correctness", corr_scores)
    promptable_png(table, args.out / "promptable.png")

    # ---- table 1: correct vs wrong
    aggs = list(AGGREGATIONS)
    first = corr["sum"]
    t1 = [
        [g.name, g.rows, *(pct(corr[a].groups[i].accuracy) for a in aggs), "50.0"] for i, g in enumerate(first.groups)
    ]
    t1.append(["**all**", first.overall.rows, *(f"**{pct(corr[a].overall.accuracy)}**" for a in aggs), "50.0"])
    t1s = [[key, *(pct(corr[a].overall.summary[key]) for a in aggs), "50.0"] for key in ("easy", "normal", "hard")]
    # ---- table 2: promptable
    rows = [r or "none" for r in ROWS]

    def ptable(agg):
        out = []
        for r in rows:
            acc = {g.name: g.accuracy for g in table[r][agg].groups}
            cells = [f"**{pct(acc[c])}**" if c == r else pct(acc[c]) for c in STYLES]
            label = f'`{r}`: "{SYSTEM_PROMPTS[r]}"' if r != "none" else "none (no system turn)"
            out.append([label, *cells, pct(table[r][agg].overall.accuracy)])
        return out

    def diag_wins(agg):
        wins = 0
        for c in STYLES:
            col = {r: {g.name: g.accuracy for g in table[r][agg].groups}[c] for r in rows}
            wins += col[c] > max(v for r, v in col.items() if r != c)
        return wins

    reading = reading_notes(corr, table, rows)
    elapsed = time.time() - t0
    pheader = ["system prompt \\ set", *STYLES, "all"]
    note = f"""# Demo model results

What the bundled demo model (`service/endorm_server/models/demo`, trained by `scripts/train_demo_model.py`; see its
model card) gives as a reward model on held-out preference sets of its own task. Generated by
`scripts/demo_results.py` ({args.engine} engine in process, float32, alpha 1; {elapsed / 60:.1f} min); the sets
are in `data/`, the full `endorm eval` report of the first one in `correctness.md` / `.json` / `.png`.
Every question is from the held-out tenth the model never saw in training. Accuracy in %; chosen must
score strictly above rejected (ties are wrong); chance is 50.

## 1. Right answer vs wrong answer

`data/correctness.jsonl`, RM-Bench form: per question the right answer and a wrong one, each in k = 3
styles (0: bare number in digits, 1: working + digits, 2: working + words; a wrong answer keeps the
working and changes the final number), no system prompt. Domains: operand size x how wrong the wrong
answer is (wild: off by 20 or more; off by ten; off by one). A row counts its 3 x 3 chosen-vs-rejected
comparisons.

{md_table(["domain", "rows", *(LABEL[a] for a in aggs), "chance"], t1)}

RM-Bench summary over all rows (easy = lower-left triangle of the 3 x 3 matrix: the chosen answer in a
more detailed style than the rejected one; normal = diagonal, same style; hard = upper-right triangle):

{md_table(["", *(LABEL[a] for a in aggs), "chance"], t1s)}

## 2. Promptable reward: system prompt (criteria) x preference set

`data/style.jsonl`, RewardBench form: one subset per criterion; the chosen response is the right answer
in that criterion's style, the rejected one the same right answer in one of the three other styles. Each
row scores the whole file with one system prompt (`endorm eval data/style.jsonl --system "..."`). The
diagonal (system prompt = the set's criterion) should win its column, as in the paper's domain table.

Endogenous reward (`sum`):

{md_table(pheader, ptable("sum"))}

Diagonal entries that are the best of their column: {diag_wins("sum")} of {len(STYLES)} (`sum`),
{diag_wins("mean")} (`mean`), {diag_wins("loglik_sum")} (`loglik_sum`), {diag_wins("loglik_mean")} (`loglik_mean`).

`loglik_mean` baseline, same forward pass:

{md_table(pheader, ptable("loglik_mean"))}

![promptable](promptable.png)

## Reading the numbers

{reading}
"""
    (args.out / "README.md").write_text(note, encoding="utf-8")
    data = {
        "model": model_name,
        "engine": args.engine,
        "elapsed_s": round(elapsed, 1),
        "correctness": {a: r.to_dict() for a, r in corr.items()},
        "promptable": {r: {a: res.to_dict() for a, res in table[r].items()} for r in rows},
        "system_prompts": SYSTEM_PROMPTS,
        "diagonal_wins": {a: diag_wins(a) for a in aggs},
    }
    (args.out / "results.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
