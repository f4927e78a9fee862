"""Per-token reward error of the served dtypes against the float64 reference, on real chat text (issue 21).

    python scripts/dtype_error.py MODEL_DIR [--data ../shared/data/rm-bench-chat.jsonl] [--rows 6] [--json OUT]
        [--variants float32,bfloat16,bfloat16+model-head]

Sequences: the first ROWS RM-Bench chat prompts, each with its 3 chosen and 3 rejected responses, chat-templated
as the service does (6 x ROWS sequences). Each is scored by a vLLM plugin engine per variant: float32, bfloat16
(float32 LM head) and bfloat16+model-head (logits in bfloat16) (eager, 1024-token steps, CPU GEMM auto: torch
for float32, oneDNN for bfloat16) and by the float64
transformers reference. Reported per dtype: |dr| per response token (median, p99, max), |r| itself for scale,
|d score| of the sequence sum, and, per prompt, how many of the 9 chosen-vs-rejected orders (sum and mean)
differ from float64's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from endorm_server.config import Settings  # noqa: E402
from endorm_server.engine.transformers_engine import TransformersEngine  # noqa: E402
from endorm_server.engine.vllm_engine import VllmEngine  # noqa: E402
from endorm_server.scoring import rewards  # noqa: E402


def pairs_from(path: str, model: str, rows: int):
    from transformers import AutoTokenizer

    from endorm_server.inputs.tokenization import PairEncoder

    enc = PairEncoder(AutoTokenizer.from_pretrained(model), vocab_size=49152)
    out = []
    for line in open(path).readlines()[:rows]:
        r = json.loads(line)
        msgs = [{"role": "user", "content": r["prompt"]}]
        out.append([enc.encode(messages=msgs, response=t) for t in (*r["chosen"], *r["rejected"])])
    return out


async def vllm_rewards(model: str, variant: str, pairs) -> list[np.ndarray]:
    """``variant``: a dtype, or ``DTYPE+model-head`` for logits in that dtype (--head-dtype model)."""
    dtype, _, head = variant.partition("+")
    s = Settings(
        model=model,
        dtype=dtype,
        head_dtype="model" if head == "model-head" else "float32",
        max_model_len=2048,
        max_num_batched_tokens=1024,
        kv_cache_gb=1,
        enforce_eager=True,
    )
    eng = VllmEngine(s, model)
    await eng.start()
    try:
        stats = await asyncio.gather(*(eng.token_stats(p.prompt_ids + p.response_ids) for p in pairs))
    finally:
        await eng.shutdown()
    return [rewards.token_rewards(st.c, st.v, len(p.prompt_ids) - st.offset).rewards for p, st in zip(pairs, stats)]


def order_flips(a: list[float], b: list[float]) -> int:
    """Of the 9 chosen (0..2) vs rejected (3..5) comparisons, how many come out differently."""
    return int(sum((a[i] > a[j]) != (b[i] > b[j]) for i in range(3) for j in range(3, 6)))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default="../shared/data/rm-bench-chat.jsonl")
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--json")
    ap.add_argument("--variants", default="float32,bfloat16,bfloat16+model-head")
    a = ap.parse_args()
    groups = pairs_from(a.data, a.model, a.rows)
    pairs = [p for g in groups for p in g]
    got = {v: await vllm_rewards(a.model, v, pairs) for v in a.variants.split(",")}
    ref = TransformersEngine(Settings(model=a.model, dtype="float64", engine="transformers"), a.model)
    ref._load()
    r64 = []
    for p in pairs:
        st = ref.forward_stats(p.prompt_ids + p.response_ids)
        r64.append(rewards.token_rewards(st.c, st.v, len(p.prompt_ids)).rewards)
    allr = np.concatenate(r64)
    report = {
        "sequences": len(pairs),
        "response_tokens": int(allr.size),
        "tokens_per_sequence": [int(min(len(p) for p in pairs)), int(max(len(p) for p in pairs))],
        "abs_r_float64": {"median": float(np.median(np.abs(allr))), "max": float(np.abs(allr).max())},
    }
    for dt, rs in got.items():
        d = np.concatenate([np.abs(x - y) for x, y in zip(rs, r64)])
        ds = np.array([abs(x.sum() - y.sum()) for x, y in zip(rs, r64)])
        flips_sum = flips_mean = 0
        for g in range(len(groups)):
            sl = slice(6 * g, 6 * g + 6)
            flips_sum += order_flips([x.sum() for x in rs[sl]], [y.sum() for y in r64[sl]])
            flips_mean += order_flips([x.mean() for x in rs[sl]], [y.mean() for y in r64[sl]])
        report[dt] = {
            "abs_dr": {"median": float(np.median(d)), "p99": float(np.quantile(d, 0.99)), "max": float(d.max())},
            "abs_dscore_sum": {"median": float(np.median(ds)), "max": float(ds.max())},
            "order_flips_vs_float64": {"sum": flips_sum, "mean": flips_mean, "of": 9 * len(groups)},
        }
    print(json.dumps(report, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
