"""Where an engine step's time goes: the plugin's pooling step against stock vLLM's generate step.

Both engines run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), one after the other,
on the same sequences (issue 21's pairs), with the same scheduler and cache settings. The model
runner's parts are wrapped with wall-clock timers:

- ``body``: ``_model_forward`` (the transformer layers, attention included);
- ``head``: the LM head and what follows it over the sequences' rows (the plugin's pooler; stock's
  ``_get_prompt_logprobs_dict``);
- ``runner other``: the rest of ``execute_model`` / ``sample_tokens`` (input preparation, metadata, and
  stock's sampler of the one generated token, whose logits are for the last row only);
- ``engine other``: the rest of ``LLMEngine.step`` (scheduler, output processing).

Run ``python -m loadtests.bench.step_profile --model DIR``; it prints one table per engine and the
per-engine throughput ratios to stock. Rounds rotate the engines' order so that a busy neighbour hits all.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Timers:
    def __init__(self) -> None:
        self.s: collections.Counter[str] = collections.Counter()
        self.n: collections.Counter[str] = collections.Counter()

    def wrap(self, obj, name: str, label: str) -> None:
        fn = getattr(obj, name)

        @functools.wraps(fn)
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.s[label] += time.perf_counter() - t0
                self.n[label] += 1

        setattr(obj, name, timed)


def build(engine_args):
    from vllm.v1.engine.llm_engine import LLMEngine

    return LLMEngine.from_engine_args(engine_args)


def runner_of(engine):
    return engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner


def instrument(engine, pooling: bool) -> Timers:
    t = Timers()
    runner = runner_of(engine)
    t.wrap(engine, "step", "step")
    t.wrap(runner, "execute_model", "execute_model")
    t.wrap(runner, "_model_forward", "body")
    if pooling:
        t.wrap(runner.model.pooler, "forward", "head")
    else:
        t.wrap(runner, "sample_tokens", "sample_tokens")
        t.wrap(runner, "_get_prompt_logprobs_dict", "head")
    return t


def run_once(engine, seqs, firsts, pooling: bool, concurrency: int) -> float:
    """Score every sequence with at most ``concurrency`` in the engine (a new one enters as one finishes)."""
    from vllm import PoolingParams, SamplingParams
    from vllm.inputs import TokensPrompt

    from endorm_server.engine.vllm_plugin.row_assembly import FIRST_KEY

    pending = list(zip(seqs, firsts))

    def add(n: int) -> None:
        for _ in range(min(n, len(pending))):
            s, first = pending.pop(0)
            if pooling:
                params = PoolingParams(
                    task="token_classify", skip_reading_prefix_cache=True, extra_kwargs={FIRST_KEY: first}
                )
            else:
                params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=0.0)
            engine.add_request(f"r{time.monotonic_ns()}", TokensPrompt(prompt_token_ids=list(s)), params)

    t0 = time.perf_counter()
    add(concurrency)
    done = 0
    while engine.has_unfinished_requests():
        finished = sum(1 for o in engine.step() if o.finished)
        done += finished
        add(finished)
    assert done == len(seqs), (done, len(seqs))
    return time.perf_counter() - t0


def table(name: str, t: Timers, wall: float, tokens: int) -> list[str]:
    body, head = t.s["body"], t.s["head"]
    runner = t.s["execute_model"] + t.s["sample_tokens"]
    rows = {
        "body (_model_forward)": body,
        "head (pooler / prompt logprobs)": head,
        "runner other": runner - body - head,
        "engine other (scheduler, outputs)": t.s["step"] - runner,
        "outside step": wall - t.s["step"],
    }
    out = [f"{name}: {tokens / wall:.0f} tokens/s, {t.n['step']} steps, {wall:.2f} s"]
    for k, v in rows.items():
        out.append(f"  {k:36s} {v:7.3f} s  {v / wall:5.1%}  {v / tokens * 1e6:7.1f} us/token")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench.step_profile", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "rm-bench-chat.jsonl")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16, help="sequences in the engine at once (issue 21: 16)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--prefix-caching", choices=["default", "on", "off"], default="default")
    ap.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--cpu-gemm", choices=["auto", "onednn", "torch"], default="auto")
    ap.add_argument(
        "--logits-chunk-rows", default="64", help="comma-separated: one plugin engine per value, e.g. 64,256"
    )
    args = ap.parse_args(argv)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    from transformers import AutoTokenizer

    from endorm_server.config import Settings
    from endorm_server.engine.vllm_engine import VllmEngine
    from endorm_server.inputs.tokenization import PairEncoder
    from loadtests.bench.fast_default import workload
    from loadtests.bench.throughput import stock_engine_args

    items = workload(args.data, args.requests, 60, 200)
    enc = PairEncoder(AutoTokenizer.from_pretrained(args.model), vocab_size=49152)
    pairs = [enc.encode(**it) for it in items]
    seqs = [list(p.prompt_ids + p.response_ids) for p in pairs]
    firsts = [len(p.prompt_ids) - 1 for p in pairs]
    tokens = sum(map(len, seqs))
    settings = Settings(
        model=args.model,
        dtype=args.dtype,
        kv_cache_gb=1.0,
        max_model_len=2048,
        enforce_eager=args.enforce_eager,
        max_num_batched_tokens=args.max_num_batched_tokens,
        batch_invariant=args.batch_invariant,
        cpu_gemm=args.cpu_gemm,
    )
    variants = []
    for rows in args.logits_chunk_rows.split(","):
        ea = VllmEngine(settings.model_copy(update={"logits_chunk_rows": int(rows)}), args.model).engine_args()
        if args.prefix_caching != "default":
            ea = dataclasses.replace(ea, enable_prefix_caching=args.prefix_caching == "on")
        variants.append((f"plugin[{rows}]", ea, True))
    variants.append(("stock", stock_engine_args(variants[0][1], max_logprobs=0), False))
    engines = {}
    for name, ea, pooling in variants:
        e = build(ea)
        run_once(e, seqs[:4], firsts[:4], pooling, 4)  # warm: compile, allocate
        engines[name] = (e, instrument(e, pooling), pooling)
    walls: dict[str, float] = collections.Counter()
    per_round: list[dict[str, float]] = []
    for r in range(args.rounds):
        order = list(engines)[r % len(engines) :] + list(engines)[: r % len(engines)]
        per_round.append({})
        for name in order:
            e, _, pooling = engines[name]
            per_round[-1][name] = run_once(e, seqs, firsts, pooling, args.concurrency)
            walls[name] += per_round[-1][name]
    print(
        f"{len(seqs)} sequences, {tokens} tokens per round, {args.concurrency} in flight, {args.rounds} rounds, "
        f"dtype {args.dtype}",
        flush=True,
    )
    for name, (_, t, _) in engines.items():
        print("\n".join(table(name, t, walls[name], tokens * args.rounds)))
    for name in engines:
        if name != "stock":
            ratios = sorted(rd["stock"] / rd[name] for rd in per_round)
            print(
                f"{name}/stock throughput {statistics.median(ratios):.3f}x (per round {ratios[0]:.3f}-{ratios[-1]:.3f})"
            )
    for e, _, _ in engines.values():
        with contextlib.suppress(Exception):
            e.engine_core.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
