"""Time of a criteria-contrast request against a plain one (issue 20), side by side in one process.

G responses to one chat prompt with a criteria system. Each repetition takes another DSP query and scores
the same G items twice, plain and as a contrast (the order alternates), with the engine's prefix cache
emptied before each request, so both start cold and neither reuses the other's prompt. Reports the
per-repetition time ratios (paired: the same items) with their median, the total time ratio and the
computed-token ratio (GroupScheduler's counters). Usage:
    python scripts/contrast_bench.py MODEL_DIR ../shared/data/dsp-test.json [--reps 6] [--G 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path


async def main(args) -> dict:
    from endorm_server.config import Settings
    from endorm_server.core.scorer import Scorer
    from endorm_server.evaluation.promptable import CRITERIA, RESPONSE_KEYS

    rows = json.loads(Path(args.dsp).read_text())
    rows = [r for r in rows if all(r["responses"][k].strip() for k in RESPONSE_KEYS)]
    settings = Settings(
        model=args.model, dtype="float32", kv_cache_gb=1, max_model_len=2048, max_num_batched_tokens=1024
    )
    scorer = await Scorer.start(settings)
    counters = scorer.groups.counters

    def items(i: int) -> list[dict]:
        q, nxt = rows[2 * i], rows[2 * i + 1]
        texts = [q["responses"][k] for k in RESPONSE_KEYS] + [nxt["responses"][k] for k in RESPONSE_KEYS]
        prompt = {"messages": [{"role": "user", "content": q["query"]}], "system": CRITERIA["academy"]}
        return [{**prompt, "response": t} for t in texts[: args.G]]

    await scorer.score(items(300))  # warm-up (a query no repetition uses)
    out = {"plain": [], "contrast": [], "plain_tokens": [], "contrast_tokens": []}
    for rep in range(args.reps):
        its = items(rep)
        for kind in ("plain", "contrast") if rep % 2 == 0 else ("contrast", "plain"):
            await scorer.engine.reset_prefix_cache()
            cached, t0 = counters.cached_prompt_tokens, time.perf_counter()
            if kind == "plain":
                res = await scorer.score(its)
                pairs = [r.pair for r in res]
            else:
                res = await scorer.score(its, contrast=True)
                pairs = [p for r in res for p in (r.criteria.pair, r.baseline.pair)]
            out[kind].append(time.perf_counter() - t0)
            out[f"{kind}_tokens"].append(sum(len(p.ids) for p in pairs) - (counters.cached_prompt_tokens - cached))
    await scorer.shutdown()
    per_rep = [c / p for c, p in zip(out["contrast"], out["plain"], strict=True)]
    tok_ratio = sum(out["contrast_tokens"]) / sum(out["plain_tokens"])
    return {
        **out,
        "G": args.G,
        "reps": args.reps,
        "time_ratio_per_rep": per_rep,
        "median_time_ratio": statistics.median(per_rep),  # paired: the same items each repetition
        "total_time_ratio": sum(out["contrast"]) / sum(out["plain"]),
        "computed_token_ratio": tok_ratio,
        "resubmissions": counters.resubmissions,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("dsp")
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("-o", "--output", default=None)
    a = p.parse_args()
    res = asyncio.run(main(a))
    text = json.dumps(res, indent=1)
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")
