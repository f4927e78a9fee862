"""Exactness on long sequences of a real model: 8 concurrent random-token sequences (P=1024, R=128, each
its own prompt; 2048-token engine steps, so chunked prefill), through the group-aware path and then the
plain path, each against the float64 transformers reference (max |dr| per sequence).

    python scripts/long_exactness_check.py MODEL_DIR [SEED] [--rm-bench FILE] [--step-tokens N]

With --rm-bench ../shared/data/rm-bench-chat.jsonl the 8 sequences are instead the 8 longest RM-Bench chat
conversations (user prompt, chosen[2] as the response; 604-734 tokens): real long text.

Each line also gives a plain float32 transformers forward's distance from float64 (float32's own floor), and
the largest |dc|, |dv| over the whole sequence (prompt positions included) besides |dr| over the response.
ENDORM_CPU_GEMM=onednn measures vLLM's oneDNN matrix products instead of the float32 default (torch's).
--step-tokens sets the engine step (max_num_batched_tokens, default 2048: one step holds a whole sequence).
Measured 2026-12-01 on SmolLM2-135M-Instruct: docs/exactness.md.
"""

import asyncio
import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from endorm_server.config import Settings
from endorm_server.engine.transformers_engine import TransformersEngine
from endorm_server.engine.vllm_engine import VllmEngine
from endorm_server.inputs.tokenization import EncodedPair
from endorm_server.scoring import rewards
from endorm_server.scoring.grouping import GroupScheduler

M = sys.argv[1] if len(sys.argv) > 1 else ""
STEP = int(sys.argv[sys.argv.index("--step-tokens") + 1]) if "--step-tokens" in sys.argv else 2048


def rm_bench_pairs(path: str) -> list[EncodedPair]:
    import json

    from transformers import AutoTokenizer

    from endorm_server.inputs.tokenization import PairEncoder

    encoder = PairEncoder(AutoTokenizer.from_pretrained(M), vocab_size=49152)
    rows = [json.loads(line) for line in open(path)]
    pairs = [encoder.encode(messages=[{"role": "user", "content": r["prompt"]}], response=r["chosen"][2]) for r in rows]
    return sorted(pairs, key=len)[-8:]


async def main():
    s = Settings(
        model=M,
        dtype="float32",
        max_model_len=4096,
        max_num_batched_tokens=STEP,
        max_num_seqs=64,
        kv_cache_gb=2,
        gpu_memory_utilization=0.1,
        enforce_eager=True,
    )
    eng = VllmEngine(s, M)
    await eng.start()
    ref = TransformersEngine(Settings(model=M, dtype="float64", engine="transformers"), M)
    ref._load()
    plain = TransformersEngine(Settings(model=M, dtype="float32", engine="transformers"), M)
    plain._load()  # float32's own floor
    if "--rm-bench" in sys.argv:
        pairs = rm_bench_pairs(sys.argv[sys.argv.index("--rm-bench") + 1])
    else:
        rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 108)
        pairs = [
            EncodedPair(
                prompt_ids=rng.integers(0, 49152, 1024).tolist(), response_ids=rng.integers(0, 49152, 128).tolist()
            )
            for _ in range(8)
        ]
    grouped = await GroupScheduler(eng).stats(pairs)  # the bench's even rounds: group-aware first, on fresh pairs
    today = await asyncio.gather(*(eng.token_stats(p.prompt_ids + p.response_ids) for p in pairs))
    alone = [await eng.token_stats(p.prompt_ids + p.response_ids) for p in pairs[:2]]
    for i, p in enumerate(pairs):
        r64 = ref.forward_stats(p.prompt_ids + p.response_ids)
        P = len(p.prompt_ids)
        rr = rewards.token_rewards(r64.c, r64.v, P).rewards
        rt = rewards.token_rewards(today[i].c, today[i].v, P - today[i].offset).rewards
        rg = rewards.token_rewards(grouped[i].c, grouped[i].v, P - grouped[i].offset).rewards
        dcv = max(
            np.nanmax(np.abs(today[i].c[:-1] - r64.c[today[i].offset : -1])),
            np.max(np.abs(today[i].v - r64.v[today[i].offset :])),
        )
        f32 = plain.forward_stats(p.prompt_ids + p.response_ids)
        r32 = rewards.token_rewards(f32.c, f32.v, P).rewards
        dcv32 = max(np.nanmax(np.abs(f32.c[:-1] - r64.c[:-1])), np.max(np.abs(f32.v - r64.v)))
        line = f"seq {i} ({len(p.prompt_ids)}+{len(p.response_ids)}): plain-float32-ref {np.max(np.abs(r32 - rr)):.2e} (c, v: {dcv32:.2e}) today-ref {np.max(np.abs(rt - rr)):.2e} (c, v: {dcv:.2e}) group-ref {np.max(np.abs(rg - rr)):.2e} today-group {np.max(np.abs(rt - rg)):.2e} max|r| {np.max(np.abs(rr)):.1f}"
        if i < 2:
            ra = rewards.token_rewards(alone[i].c, alone[i].v, P - alone[i].offset).rewards
            line += f" alone-ref {np.max(np.abs(ra - rr)):.2e}"
        print(line, flush=True)
    await eng.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
