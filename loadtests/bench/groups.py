"""``python -m loadtests.bench groups``: GRPO-shaped groups, today's path vs group-aware.

A workload is G responses of R tokens to one prompt of P tokens, scored at once.
    today:        every response re-runs its prompt; LM head on all N rows
                  (``engine.token_stats(seq)``: the prefix cache is not read)
    group-aware:  service/endorm_server/scoring/grouping.py (leader first, siblings read its prompt
                  from the cache; LM head on rows P-1 .. N-1 only)
The ideal ratio counts tokens through the model: G(P+R) / (P+GR). Each cell is
measured in interleaved rounds (the order alternates) on one in-process engine,
with fresh random prompts per round so no round hits another's cache; the ratio
is taken within a round, then the median. A control cell without sharing (every
response its own prompt) must not get slower. Group-aware results are checked
against today's (max |dr| per token) so a fast wrong answer cannot pass.

Writes ``<out>/<date>-<machine>-groups.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import time
from pathlib import Path

import numpy as np

from loadtests.bench.machine import footer, loadavg, machine_info
from loadtests.bench.model import resolve

ROOT = Path(__file__).resolve().parents[2]
FULL_GRID = [(g, p, r) for g in (4, 8, 16) for p in (256, 1024, 2048) for r in (64, 256)]
REDUCED_GRID = [(8, 1024, 64), (8, 1024, 256), (8, 2048, 64), (8, 2048, 256), (4, 256, 64), (16, 1024, 64)]
TARGET_GRID = [(8, 1024, 64), (8, 1024, 256), (8, 2048, 64), (8, 2048, 256)]  # the cells with a target (a slow model)
SMOKE_GRID = [(2, 256, 32)]  # checks the harness (tests/loadtests), measures nothing of interest
CONTROL = (8, 1024, 128)  # G responses, each with its own prompt: nothing to share


def ideal(g: int, p: int, r: int) -> float:
    return g * (p + r) / (p + g * r)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench groups", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bench")
    p.add_argument("--grid", choices=("full", "reduced", "targets", "smoke"), default="reduced")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--kv-cache-gb", type=float, default=1.0)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    p.add_argument("--machine")
    return p


def _pairs(rng: np.random.Generator, vocab: int, g: int, p: int, r: int, shared: bool):
    from endorm_server.inputs.tokenization import EncodedPair

    prompt = rng.integers(0, vocab, p).tolist()
    return [
        EncodedPair(
            prompt_ids=prompt if shared else rng.integers(0, vocab, p).tolist(),
            response_ids=rng.integers(0, vocab, r).tolist(),
        )
        for _ in range(g)
    ]


def _rewards(stats, pairs) -> list[np.ndarray]:
    from endorm_server.scoring import rewards

    return [rewards.token_rewards(s.c, s.v, len(p.prompt_ids) - s.offset).rewards for s, p in zip(stats, pairs)]


async def _measure(engine, cell, shared: bool, rounds: int, vocab: int, seed: int) -> dict:
    from endorm_server.scoring.grouping import GroupScheduler

    g, p, r = cell
    rng = np.random.default_rng(seed)
    out = {
        "G": g,
        "P": p,
        "R": r,
        "shared": shared,
        "ideal": ideal(g, p, r) if shared else 1.0,
        "today_s": [],
        "group_s": [],
        "max_abs_dr": 0.0,
        "resubmissions": 0,
        "sequences": 0,
        "rows_from_leader": 0,
        "cached_prompt_tokens": 0,
    }
    for k in range(rounds):
        # Even rounds: group-aware first, then today's path on the same pairs (it does not read the
        # cache, so its time is unaffected) and the answers are compared. Odd rounds: today's path
        # first on fresh pairs, then group-aware on other fresh pairs (today's would have cached them).
        group_first = k % 2 == 0
        pairs = _pairs(rng, vocab, g, p, r, shared)
        for path in ("group", "today") if group_first else ("today", "group"):
            if path == "group" and not group_first:
                pairs = _pairs(rng, vocab, g, p, r, shared)
            t0 = time.perf_counter()
            if path == "today":
                stats = await asyncio.gather(*(engine.token_stats(x.prompt_ids + x.response_ids) for x in pairs))
            else:
                sched = GroupScheduler(engine)
                stats = await sched.stats(pairs)
                grouped = stats
            out[f"{path}_s"].append(time.perf_counter() - t0)
            if path == "group":
                c = sched.counters
                out["resubmissions"] += c.resubmissions
                out["rows_from_leader"] += c.rows_from_leader
                out["cached_prompt_tokens"] += c.cached_prompt_tokens
                out["sequences"] += g
            elif group_first:  # the same pairs through both paths: the answers must agree
                d = max(float(np.max(np.abs(a - b))) for a, b in zip(_rewards(grouped, pairs), _rewards(stats, pairs)))
                out["max_abs_dr"] = max(out["max_abs_dr"], d)
    ratios = [a / b for a, b in zip(out["today_s"], out["group_s"])]
    out["ratios"] = ratios
    out["ratio"] = statistics.median(ratios)
    out["ratio_over_ideal"] = out["ratio"] / out["ideal"]
    if shared:
        out["target"] = 0.7 * out["ideal"] if (g == 8 and p >= 1024 and r <= 256) else None
    else:
        out["target"] = 0.97
    out["met"] = None if out["target"] is None else out["ratio"] >= out["target"]
    return out


async def run(args) -> dict:
    from endorm_server.config import Settings
    from endorm_server.engine.vllm_engine import VllmEngine

    model_path, spec = resolve(args.model)
    vocab = int(json.loads((model_path / "config.json").read_text())["vocab_size"])
    settings = Settings(
        model=str(model_path),
        dtype="float32",
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=64,
        kv_cache_gb=args.kv_cache_gb,
        gpu_memory_utilization=0.1,
        enforce_eager=True,
    )
    engine = VllmEngine(settings, str(model_path))
    await engine.start()
    try:
        await _measure(engine, (2, 256, 64), True, 1, vocab, seed=0)  # warm both paths
        cells = []
        grid = {"full": FULL_GRID, "reduced": REDUCED_GRID, "targets": TARGET_GRID, "smoke": SMOKE_GRID}[args.grid]
        control = SMOKE_GRID[0] if args.grid == "smoke" else CONTROL
        for i, cell in enumerate([*grid, control]):
            shared = i < len(grid)  # the last cell is the control
            res = await _measure(engine, cell, shared, args.rounds, vocab, seed=100 + i)
            print(
                f"[groups] G={cell[0]:2d} P={cell[1]:4d} R={cell[2]:3d} shared={shared!s:5} "
                f"measured {res['ratio']:.2f}x ideal {res['ideal']:.2f}x ({res['ratio_over_ideal']:.2f} of ideal) "
                f"resubmissions {res['resubmissions']}/{res['sequences']} max|dr| {res['max_abs_dr']:.1e}",
                flush=True,
            )
            cells.append(res)
    finally:
        await engine.shutdown()
    return {
        "cells": cells,
        "model": str(model_path),
        "model_describe": spec.describe() if spec else str(model_path),
        "settings": settings.model_dump(mode="json") if hasattr(settings, "model_dump") else {},
    }


def write(res: dict, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / f"{stem}.json"
    js.write_text(json.dumps(res, indent=2, default=str) + "\n")
    lines = [
        f"# Group-aware scoring vs today's path ({res['date']})",
        "",
        f"Model: {res['model_describe']}. Command: `{res['command']}`.",
        "",
        "Ratio = today's time / group-aware time for the same workload (median over rounds, measured side by side); "
        "ideal = G(P+R)/(P+GR), tokens through the model.",
        "",
        "| G | P | R | sharing | measured | ideal | measured/ideal | target | met | resubmissions | rows from leader | max abs dr |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cells"]:
        tgt = "" if c["target"] is None else f">= {c['target']:.2f}"
        met = "" if c["met"] is None else ("yes" if c["met"] else "NO")
        lines.append(
            f"| {c['G']} | {c['P']} | {c['R']} | {'yes' if c['shared'] else 'no (control)'} | {c['ratio']:.2f} | "
            f"{c['ideal']:.2f} | {c['ratio_over_ideal']:.2f} | {tgt} | {met} | {c['resubmissions']}/{c['sequences']} | "
            f"{c['rows_from_leader']} | {c['max_abs_dr']:.1e} |"
        )
    lines += ["", footer(res["machine"], res["model_describe"], res["command"])]
    md = out / f"{stem}.md"
    md.write_text("\n".join(lines) + "\n")
    paths = [js, md]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cells = [c for c in res["cells"] if c["shared"]]
        labels = [f"G{c['G']} P{c['P']} R{c['R']}" for c in cells]
        x = np.arange(len(cells))
        fig, ax = plt.subplots(figsize=(max(6, len(cells) * 0.9), 4))
        ax.bar(x - 0.2, [c["ideal"] for c in cells], 0.4, label="ideal G(P+R)/(P+GR)", color="#bbbbbb")
        ax.bar(x + 0.2, [c["ratio"] for c in cells], 0.4, label="measured", color="#2a7ab0")
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_ylabel("speed-up over today's path (x)")
        ax.set_title("Group-aware scoring: measured vs ideal")
        ax.legend()
        fig.tight_layout()
        png = out / f"{stem}.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        paths.append(png)
    except ImportError:
        pass
    return paths


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    info = machine_info()
    date = time.strftime("%Y-%m-%d")
    res = {
        "date": date,
        "command": "python -m loadtests.bench groups " + shlex.join(argv),
        "machine": info,
        "loadavg": {"start": loadavg()},
    }
    res.update(asyncio.run(run(args)))
    res["loadavg"]["end"] = loadavg()
    for p in write(res, args.out, f"{date}-{args.machine or info['slug']}-groups"):
        print(p)
    return 0 if all(c["met"] is not False for c in res["cells"]) else 1
