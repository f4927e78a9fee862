"""``python -m loadtests.bench``: every route measured side by side in one run.

Phases (all on one generated benchmark model, one set of engine settings):

1. throughput: HTTP (/score through ``endorm serve``) vs the same plugin engine in-process
   vs stock vLLM ``prompt_logprobs=0`` vs a naive transformers forward, on one saturating
   workload, in interleaved rounds (the order rotates each round; ratios are taken within
   a round, then the median) so background load hits every route alike;
2. full vocabulary: stock vLLM ``prompt_logprobs=-1`` (``max_logprobs=-1``) vs the plugin
   and ``prompt_logprobs=0`` on a small workload (the full-vocabulary route is ~100x slower);
3. latency vs offered load: a locust step run against the same server;
4. memory vs sequence length: plugin engine vs naive path, each in its own process;
5. ceiling (opt-in, ``--only ceiling``; meant for a real model, ``--model DIR``): plugin
   throughput against a plain float32 torch forward of the same sequences on every core,
   with one plugin engine per CPU thread binding (``--bindings``), side by side.

Writes ``<out>/<date>-<machine>.md``, ``.json`` and ``-{throughput,memory,latency}.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests.bench import latency as lat
from loadtests.bench.machine import loadavg, machine_info
from loadtests.bench.model import PRESETS, ModelSpec, resolve
from loadtests.bench.throughput import (
    HttpDriver,
    InprocDriver,
    NaiveDriver,
    StockDriver,
    StockVllm,
    Workload,
    stock_engine_args,
)
from loadtests.server import LocalServer

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "bench-key"
PHASES = ("throughput", "latency", "memory", "ceiling")
DEFAULT_PHASES = ("throughput", "latency", "memory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("--model", default="bench", help=f"preset ({', '.join(PRESETS)}) or a model directory [bench]")
    p.add_argument("--quick", action="store_true", help="a fast check of the harness: small model, short phases")
    p.add_argument(
        "--only",
        default=",".join(DEFAULT_PHASES),
        help=f"phases to run, from {','.join(PHASES)} [{','.join(DEFAULT_PHASES)}]",
    )
    p.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results", help="results folder")
    p.add_argument("--machine", help="machine name in the file names [derived: GPU name, or cpuN-isa]")
    p.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="measure nothing: rewrite the report (md, plots) from a results JSON",
    )
    g = p.add_argument_group("engine (identical for every vLLM route)")
    g.add_argument("--dtype", default="float32")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048)
    g.add_argument("--max-num-seqs", type=int, default=64)
    g.add_argument("--kv-cache-gb", type=float, default=0.25)
    g.add_argument("--logits-chunk-rows", type=int, default=64)  # the server's default (config.py)
    g.add_argument("--no-eager", action="store_true", help="allow graph capture / compilation (slow start on CPU)")
    g = p.add_argument_group("throughput")
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--seqs", type=int, default=16, help="sequences in the saturating workload")
    g.add_argument("--prompt-len", type=int, default=384)
    g.add_argument("--response-len", type=int, default=128)
    g.add_argument("--items", type=int, default=4, help="sequences per request")
    g.add_argument("--concurrency", type=int, default=3, help="requests in flight")
    g.add_argument("--full-vocab-seqs", type=int, default=2, help="sequences in the full-vocabulary workload")
    g.add_argument("--full-vocab-len", type=int, default=128, help="tokens per sequence there")
    g.add_argument(
        "--py-spy",
        type=float,
        default=0,
        metavar="SECONDS",
        help="after the rounds, profile the server's processes under HTTP load for SECONDS (py-spy)",
    )
    g = p.add_argument_group("latency vs load (locust)")
    g.add_argument("--steps", default="2,4,6,8,16,32", help="users per step")
    g.add_argument("--step-s", type=float, default=15)
    g.add_argument("--pacing-s", type=float, default=3.0, help="each user sends one request per PACING seconds")
    g.add_argument("--lat-prompt-len", type=int, default=384)
    g.add_argument("--lat-response-len", type=int, default=128)
    g.add_argument(
        "--max-inflight-tokens",
        type=int,
        default=6144,
        help="the server's admission limit (>= items x concurrency x sequence length of the throughput "
        "workload, so that phase never waits)",
    )
    g.add_argument("--queue-timeout-s", type=float, default=2.0)
    g.add_argument(
        "--bindings",
        default="vllm-auto,all,nobind",
        help="ceiling phase: CPU thread bindings, one plugin engine each, from "
        "vllm-auto,all,nobind,endorm-default [vllm-auto,all,nobind]",
    )
    g = p.add_argument_group("memory")
    g.add_argument("--mem-lengths", default="512,1024,2048,4096,8192")
    return p


QUICK = dict(
    model="small",
    rounds=1,
    seqs=4,
    prompt_len=192,
    response_len=64,
    items=2,
    concurrency=2,
    full_vocab_seqs=1,
    full_vocab_len=32,
    steps="1,2",
    step_s=6,
    pacing_s=1.0,
    lat_prompt_len=96,
    lat_response_len=32,
    mem_lengths="256,512",
    max_inflight_tokens=1024,
    kv_cache_gb=0.1,
)


def apply_quick(args: argparse.Namespace, argv: list[str]) -> None:
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    for key, value in QUICK.items():
        if key not in given:
            setattr(args, key, value)


def engine_settings(args: argparse.Namespace, max_model_len: int) -> dict:
    return dict(
        dtype=args.dtype,
        max_model_len=max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        kv_cache_gb=args.kv_cache_gb,
        gpu_memory_utilization=0.1,
        enforce_eager=not args.no_eager,
        logits_chunk_rows=args.logits_chunk_rows,
    )


def settings_flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ------------------------------------------------------------------------ throughput


async def throughput_phase(args, model_path: Path, settings: dict, server: LocalServer, vocab: int, res: dict) -> None:
    from endorm_server.config import Settings
    from endorm_server.engine.vllm_engine import VllmEngine

    sat = Workload.random(
        n=args.seqs,
        prompt_len=args.prompt_len,
        response_len=args.response_len,
        vocab_size=vocab,
        items=args.items,
        concurrency=args.concurrency,
        seed=1,
    )
    small = Workload.random(
        n=args.full_vocab_seqs,
        prompt_len=args.full_vocab_len // 2,
        response_len=args.full_vocab_len - args.full_vocab_len // 2,
        vocab_size=vocab,
        items=1,
        concurrency=args.full_vocab_seqs,
        seed=2,
    )
    warm = Workload.random(n=2, prompt_len=48, response_len=16, vocab_size=vocab, items=1, concurrency=2, seed=3)
    warm_full = Workload.random(n=1, prompt_len=4, response_len=4, vocab_size=vocab, items=1, concurrency=1, seed=4)
    res["workloads"] = {
        "saturation": sat.describe(),
        "saturation_tokens": sat.tokens,
        "full_vocab": small.describe(),
        "full_vocab_tokens": small.tokens,
    }

    inproc = InprocDriver(Settings(model=str(model_path), **settings), str(model_path))
    log("starting the in-process plugin engine")
    await inproc.start()
    plugin_args = VllmEngine(Settings(model=str(model_path), **settings), str(model_path)).engine_args()
    stock = StockVllm(stock_engine_args(plugin_args, max_logprobs=-1))
    log("starting the stock vLLM engine (runner=generate, max_logprobs=-1)")
    await stock.start()
    naive = NaiveDriver(str(model_path), args.dtype)
    await naive.start()
    log("waiting for the server")
    await asyncio.to_thread(server.wait_ready)
    http = HttpDriver(server.url, API_KEY)
    http_tok = HttpDriver(server.url, API_KEY, return_tokens=True)
    await http.start()
    await http_tok.start()
    stock0, stockfull = StockDriver(stock, 0), StockDriver(stock, -1)
    drivers = [http, http_tok, inproc, stock0, naive]
    try:
        one = Workload(sat.seqs[: sat.items], sat.prompt_len, sat.items, 1)
        for d in drivers:  # first requests compile kernels and size buffers: keep them out of the timings
            await d.run(warm)
            await d.run(one)
        await stockfull.run(warm_full)
        res["checks"] = await agreement(inproc, stock, naive, sat.seqs[0])
        log(f"agreement: {res['checks']}")

        res["loadavg"]["throughput_start"] = loadavg()
        rounds = []
        for r in range(args.rounds):
            order = drivers[r % len(drivers) :] + drivers[: r % len(drivers)]
            times = {}
            for d in order:
                times[d.name] = await d.run(sat)
                log(f"round {r + 1}/{args.rounds} {d.name:12s} {sat.tokens / times[d.name]:8.0f} tokens/s")
            rounds.append(times)
        res["throughput"] = {
            "rounds": rounds,
            "tokens": sat.tokens,
            "tokens_per_s": {d.name: summarize([sat.tokens / t[d.name] for t in rounds]) for d in drivers},
        }
        if args.py_spy > 0:
            await profile_server(args, server, http, sat, res)

        log("full-vocabulary route (small workload)")
        small_rounds = []
        for r in range(args.rounds):
            order = [inproc, stock0] if r % 2 == 0 else [stock0, inproc]
            if r == 0:
                order.append(stockfull)
            times = {}
            for d in order:
                times[d.name] = await d.run(small)
                log(f"small {r + 1}/{args.rounds} {d.name:12s} {small.tokens / times[d.name]:8.1f} tokens/s")
            small_rounds.append(times)
        res["full_vocab"] = {"rounds": small_rounds, "tokens": small.tokens}
        res["loadavg"]["throughput_end"] = loadavg()
    finally:
        await http.close()
        await http_tok.close()
        await inproc.close()
        stock.close()
        await naive.close()


async def profile_server(args, server: LocalServer, http: HttpDriver, sat: Workload, res: dict) -> None:
    from loadtests.bench import profile

    if not profile.available():
        log("py-spy is not installed: no profile")
        return
    pids = profile.server_processes(server.pid)
    log(f"py-spy: {args.py_spy:g} s of HTTP load, processes {pids}")
    procs = profile.start(pids, args.py_spy, args.out, res["stem"])
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < args.py_spy + 2:
        await http.run(sat)
        n += sat.tokens
    for proc, _ in procs.values():
        await asyncio.to_thread(proc.wait)
    res["profile"] = {
        "seconds": args.py_spy,
        "tokens_per_s_while_profiled": n / (time.monotonic() - t0),
        "files": {k: p.name for k, (_, p) in procs.items()},
        **profile.summarize({k: p for k, (_, p) in procs.items()}, args.py_spy),
    }
    worker = res["profile"].get("worker", {})
    log(f"py-spy worker parts: {worker.get('parts')}")


async def agreement(inproc: InprocDriver, stock: StockVllm, naive: NaiveDriver, seq) -> dict:
    """The routes compute the same numbers (so the timings compare like with like)."""
    s = await inproc.stats(seq)
    c, v, logp = naive.stats(seq)
    out = await stock.prompt_logprobs(seq, 0)
    stock_lp = np.array([next(iter(d.values())).logprob for d in out.prompt_logprobs[1:]])
    plugin_lp = s.c[:-1] - s.v[:-1]
    return {
        "plugin_vs_naive_c": float(np.max(np.abs(s.c[:-1] - c))),
        "plugin_vs_naive_v": float(np.max(np.abs(s.v - v))),
        "plugin_vs_stock0_logprob": float(np.max(np.abs(plugin_lp - stock_lp))),
    }


def ratios_from_rounds(rounds: list[dict], num: str, den: str, *, time_ratio: bool) -> dict | None:
    """Per-round ratio num/den of times (time_ratio) or of throughputs, summarised."""
    vals = [(r[num] / r[den]) if time_ratio else (r[den] / r[num]) for r in rounds if num in r and den in r]
    return summarize(vals) if vals else None


# ------------------------------------------------------------------------ latency


def latency_phase(args, server: LocalServer, workdir: Path, res: dict) -> None:
    cfg = lat.step_config(
        steps=args.steps,
        step_s=args.step_s,
        pacing_s=args.pacing_s,
        prompt_len=args.lat_prompt_len,
        response_len=args.lat_response_len,
        api_key=API_KEY,
        log=workdir / "latency_requests.jsonl",
        summary=workdir / "latency_summary.json",
    )
    res["loadavg"]["latency_start"] = loadavg()
    log(f"locust step run: users {args.steps}, {args.step_s:g} s each, one request / {args.pacing_s:g} s per user")
    rc = lat.run_locust(cfg, server.url, workdir / "latency")
    res["loadavg"]["latency_end"] = loadavg()
    steps = lat.analyse(workdir / "latency_requests.jsonl", cfg, pacing_s=args.pacing_s)
    res["latency"] = lat.derive(
        {
            "locust_exit_code": rc,
            "steps": lat.steps_as_dicts(steps),
            "request": f"/score, 1 item, {args.lat_prompt_len} + {args.lat_response_len} token ids",
            "tokens_per_request": args.lat_prompt_len + args.lat_response_len,
            "pacing_s": args.pacing_s,
            "max_inflight_tokens": args.max_inflight_tokens,
            "queue_timeout_s": args.queue_timeout_s,
            "engine_step_tokens": args.max_num_batched_tokens,
        }
    )
    for s in steps:
        log(
            f"users {s.users:3d} offered {s.offered_rps:5.2f}/s goodput {s.goodput_rps:5.2f}/s "
            f"p50 {s.p50_s} p99 {s.p99_s} rejected {s.reject_ratio:.0%}"
        )


# ------------------------------------------------------------------------ memory


def memory_phase(args, model_path: Path, settings: dict, workdir: Path, res: dict) -> None:
    from loadtests.bench.memory import MALLOC_ENV

    res["loadavg"]["memory_start"] = loadavg()
    out = {}
    env = {
        **os.environ,
        **MALLOC_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for path in ("naive", "plugin"):
        target = workdir / f"memory_{path}.json"
        cmd = [
            sys.executable,
            "-m",
            "loadtests.bench.memory",
            path,
            "--model",
            str(model_path),
            "--lengths",
            args.mem_lengths,
            "--settings-json",
            json.dumps(settings),
            "--out",
            str(target),
        ]
        log(f"memory: {path} path, lengths {args.mem_lengths}")
        with open(workdir / f"memory_{path}.log", "wb") as logf:
            proc = subprocess.run(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"memory {path} failed: {(workdir / f'memory_{path}.log').read_text()[-3000:]}")
        out[path] = json.loads(target.read_text())["rows"]
    res["memory"] = out
    res["loadavg"]["memory_end"] = loadavg()


# ------------------------------------------------------------------------ main


def rewrite_report(path: Path) -> int:
    from loadtests.bench.report import write_report

    res = json.loads(path.read_text())
    if res.get("latency"):
        res["latency"] = lat.derive(res["latency"])
    for p in write_report(res, path.parent, path.stem):
        log(f"wrote {p}")
    return 0


def _exit_on_sigterm(signum, frame):  # so `finally` stops the server and the engines
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["groups"]:  # GRPO-shaped groups: today's path vs group-aware (loadtests/bench/groups.py)
        from loadtests.bench.groups import main as groups_main

        return groups_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.quick:
        apply_quick(args, argv)
    if args.report_from:
        return rewrite_report(args.report_from)
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := set(phases) - set(PHASES):
        raise SystemExit(f"--only: unknown phases {sorted(unknown)}")
    command = "python -m loadtests.bench " + shlex.join(argv)
    t_start = time.monotonic()
    info = machine_info()
    slug = args.machine or info["slug"]
    date = time.strftime("%Y-%m-%d")
    model_path, spec = resolve(args.model)
    model_cfg = json.loads((model_path / "config.json").read_text())
    spec = spec or ModelSpec(
        arch=model_cfg.get("model_type", "?"),
        vocab_size=model_cfg["vocab_size"],
        hidden_size=model_cfg["hidden_size"],
        num_layers=model_cfg["num_hidden_layers"],
        max_positions=model_cfg["max_position_embeddings"],
    )
    max_len = int(model_cfg["max_position_embeddings"])
    settings = engine_settings(args, max_len)
    res: dict = {
        "date": date,
        "stem": f"{date}-{slug}",
        "command": command,
        "machine": info,
        "model": {**spec.as_dict(), "path": str(model_path), "describe": spec.describe()},
        "engine_settings": settings,
        "phases": phases,
        "loadavg": {"start": loadavg()},
        "quick": args.quick,
    }
    log(f"model {spec.describe()} at {model_path}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="endorm-bench-") as tmp:
        workdir = Path(tmp)
        server = None
        if "throughput" in phases or "latency" in phases:
            flags = [
                "--model",
                str(model_path),
                *settings_flags(settings),
                "--api-key",
                API_KEY,
                "--max-inflight-tokens",
                str(args.max_inflight_tokens),
                "--queue-timeout-s",
                str(args.queue_timeout_s),
                "--max-items-per-request",
                "256",
                "--request-timeout-s",
                "600",
            ]
            res["server_command"] = "endorm serve " + shlex.join(flags)
            # Same session as the in-process engines: the kernel shares CPU fairly between sessions.
            server = LocalServer(flags, log_path=workdir / "server.log", new_session=False).start()
        try:
            if "throughput" in phases:
                asyncio.run(throughput_phase(args, model_path, settings, server, spec.vocab_size, res))
            if "latency" in phases:
                server.wait_ready()
                latency_phase(args, server, workdir, res)
            if "ceiling" in phases:
                from loadtests.bench.ceiling import ceiling_phase

                res["loadavg"]["ceiling_start"] = loadavg()
                asyncio.run(ceiling_phase(args, model_path, settings, spec.vocab_size, res, log))
                res["loadavg"]["ceiling_end"] = loadavg()
        except BaseException:
            if server is not None:
                print(server.log_tail(), file=sys.stderr)
            raise
        finally:
            if server is not None:
                server.stop()
        if "memory" in phases:
            memory_phase(args, model_path, settings, workdir, res)
    res["elapsed_s"] = time.monotonic() - t_start
    res["loadavg"]["end"] = loadavg()

    from loadtests.bench.report import write_report

    paths = write_report(res, args.out, res["stem"])
    for p in paths:
        log(f"wrote {p}")
    return 0
