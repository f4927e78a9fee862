"""Plugin throughput against the machine's ceiling, and the CPU thread bindings side by side.

The ceiling for a set of token sequences is a plain float32 torch forward of the model body
and its LM head over them, batched, on every allowed core (``torch.set_num_threads``), with
no post-processing at all: no logsumexp, no gather, nothing leaves the process. No scorer
of this model on this machine can beat it without other kernels, so plugin / ceiling says
how much of the machine the service's engine uses.

The plugin side is the in-process vLLM engine with the EndoReward plugin (two floats per
token out), started once per thread binding (``VLLM_CPU_OMP_THREADS_BIND``; ``all-onednn``
also switches the body's matrix products to oneDNN, ``--cpu-gemm``), all alive at
once and measured in interleaved rounds (the order rotates each round; ratios are taken
within a round, then the median), so background load hits every route alike.

``python -m loadtests.bench --model DIR --only ceiling``

``python -m loadtests.bench.ceiling [--model DIR]`` measures the machine's matrix-product peak itself
(loadtests/bench/peak.py: the figure every "fraction of peak" is divided by) and writes
``<out>/<date>-<machine>-ceiling.{json,md}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from loadtests.bench.throughput import Driver, InprocDriver, Workload, run_requests

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
RESERVED_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
GEMM_ENV = "ENDORM_CPU_GEMM"  # read by Settings, so BoundEngineDriver makes them under the binding's env


@dataclass(frozen=True)
class Binding:
    name: str
    env: dict[str, str]  # set while the engine starts; an empty value removes the variable
    what: str


def bindings(cpus: Sequence[int]) -> dict[str, Binding]:
    """The bindings worth comparing on this machine."""
    from endorm_server.engine.cpu_threads import cpu_list

    every = cpu_list(cpus)
    return {
        "vllm-auto": Binding(
            "vllm-auto",
            {BIND_ENV: "auto", RESERVED_ENV: ""},
            "vLLM's automatic binding: one NUMA node, one reserved core for the front end",
        ),
        "all": Binding(
            "all", {BIND_ENV: every, RESERVED_ENV: "", GEMM_ENV: ""}, f"the worker on every allowed CPU ({every})"
        ),
        "all-onednn": Binding(
            "all-onednn",
            {BIND_ENV: every, RESERVED_ENV: "", GEMM_ENV: "onednn"},
            "as all, with vLLM's oneDNN for the model body's matrix products (--cpu-gemm onednn; "
            "the default for float32 is torch's, service/endorm_server/engine/vllm_plugin/cpu_gemm.py)",
        ),
        "nobind": Binding(
            "nobind", {BIND_ENV: "nobind", RESERVED_ENV: ""}, "no pinning: OpenMP and the OS place the worker's threads"
        ),
        "endorm-default": Binding(
            "endorm-default", {BIND_ENV: "", RESERVED_ENV: ""}, "nothing set: endorm_server.engine.cpu_threads chooses"
        ),
    }


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v:
                os.environ[k] = v
            else:
                os.environ.pop(k, None)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class BoundEngineDriver(InprocDriver):
    """The plugin engine in-process, its worker started under one thread binding."""

    def __init__(self, settings: dict, model_path: str, binding: Binding) -> None:
        from endorm_server.config import Settings

        with environment(binding.env):  # ENDORM_* variables of the binding are read by Settings
            super().__init__(Settings(model=model_path, **settings), model_path)
        self.binding = binding
        self.name = f"plugin[{binding.name}]"

    async def start(self) -> None:
        with environment(self.binding.env):
            await super().start()


class CeilingDriver(Driver):
    """float32 body + LM head forward, each request's sequences as one batch, every core."""

    name = "ceiling"

    def __init__(self, model_path: str, threads: int) -> None:
        self.model_path, self.threads = model_path, threads
        self.model = None

    async def start(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32).eval()

    def logits(self, seqs: Sequence[Sequence[int]]):
        import torch

        with torch.inference_mode():
            ids = torch.tensor([list(s) for s in seqs], dtype=torch.long)
            hidden = self.model.model(input_ids=ids).last_hidden_state  # the body
            return self.model.lm_head(hidden)  # [B, T, V]; nothing more

    async def run(self, workload: Workload) -> float:
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:

            async def send(req):
                self.logits(req)

            return await run_requests(Workload(workload.seqs, workload.prompt_len, workload.items, 1), send)
        finally:
            torch.set_num_threads(old)

    async def close(self) -> None:
        self.model = None


async def agreement(engine: InprocDriver, ceiling: CeilingDriver, seq: Sequence[int]) -> dict[str, float]:
    """The plugin computes c and v from the same logits the ceiling stops at."""
    import torch

    s = await engine.stats(seq)
    logits = ceiling.logits([seq])[0].double()
    ids = torch.tensor(list(seq))
    c = logits[:-1].gather(-1, ids[1:].unsqueeze(-1)).squeeze(-1).numpy()
    v = torch.logsumexp(logits, dim=-1).numpy()
    return {
        "plugin_vs_ceiling_logits_c": float(np.max(np.abs(s.c[:-1] - c))),
        "plugin_vs_ceiling_logits_v": float(np.max(np.abs(s.v - v))),
    }


async def ceiling_phase(args, model_path, settings: dict, vocab: int, res: dict, log) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    chosen = [b.strip() for b in args.bindings.split(",") if b.strip()]
    known = bindings(cpus)
    if unknown := set(chosen) - set(known):
        raise SystemExit(f"--bindings: unknown {sorted(unknown)}; choose from {', '.join(known)}")
    work = Workload.random(
        n=args.seqs,
        prompt_len=args.prompt_len,
        response_len=args.response_len,
        vocab_size=vocab,
        items=args.items,
        concurrency=args.concurrency,
        seed=5,
    )
    warm = Workload.random(n=2, prompt_len=48, response_len=16, vocab_size=vocab, items=1, concurrency=2, seed=6)
    res["ceiling_workload"] = {
        "describe": work.describe(),
        "tokens": work.tokens,
        "cpus": cpus,
        "bindings": {n: {"env": known[n].env, "what": known[n].what} for n in chosen},
    }
    ceiling = CeilingDriver(str(model_path), threads=len(cpus))
    await ceiling.start()
    engines = []
    try:
        for name in chosen:
            log(f"ceiling phase: starting the plugin engine, binding {name} {known[name].env}")
            d = BoundEngineDriver(settings, str(model_path), known[name])
            await d.start()
            engines.append(d)
        drivers: list[Driver] = [ceiling, *engines]
        one = Workload(work.seqs[: work.items], work.prompt_len, work.items, 1)
        for d in drivers:  # first requests compile kernels and size buffers: keep them out of the timings
            await d.run(warm)
            await d.run(one)
        res["ceiling_checks"] = await agreement(engines[0], ceiling, work.seqs[0])
        log(f"agreement: {res['ceiling_checks']}")
        rounds = []
        for r in range(args.rounds):
            order = drivers[r % len(drivers) :] + drivers[: r % len(drivers)]
            times = {}
            for d in order:
                times[d.name] = await d.run(work)
                log(f"round {r + 1}/{args.rounds} {d.name:24s} {work.tokens / times[d.name]:8.0f} tokens/s")
                await asyncio.sleep(0)
            rounds.append(times)
        res["ceiling"] = {
            "rounds": rounds,
            "tokens": work.tokens,
            "threads": len(cpus),
            "measured_at": time.strftime("%H:%M:%S"),
        }
    finally:
        for d in engines:
            await d.close()
        await ceiling.close()


def ratios(res: dict, add) -> None:
    """plugin / ceiling throughput per binding (target >= 0.8), and each binding against vLLM's auto."""
    ce = res.get("ceiling")
    if not ce:
        return
    rounds = ce["rounds"]
    names = [n for n in rounds[0] if n.startswith("plugin[")]
    for n in names:
        add(
            f"ceiling_{n[7:-1]}",
            f"{n} / ceiling throughput",
            [r["ceiling"] / r[n] for r in rounds if n in r],
            0.8,
            ">=",
            f"ceiling: float32 torch body + LM head forward of the same sequences on {ce['threads']} threads, "
            "no post-processing",
        )
    if "plugin[vllm-auto]" in names:
        for n in names:
            if n != "plugin[vllm-auto]":
                add(
                    f"binding_{n[7:-1]}_vs_auto",
                    f"{n} / plugin[vllm-auto] throughput",
                    [r["plugin[vllm-auto]"] / r[n] for r in rounds if n in r],
                    None,
                    ">=",
                    "thread binding against vLLM's automatic one, same rounds",
                )


def markdown(res: dict) -> list[str]:
    ce = res.get("ceiling")
    if not ce:
        return []
    w = res["ceiling_workload"]
    lines = [
        "",
        "## Plugin vs the machine's ceiling, and CPU thread bindings",
        "",
        f"Workload: {w['describe']} ({ce['tokens']} tokens per round, {len(ce['rounds'])} rounds, order "
        f"rotated each round). Ceiling: a float32 torch forward of the model body and LM head over the same "
        f"sequences on {ce['threads']} threads, no post-processing.",
        "",
        "| route | binding | tokens/s median | min | max |",
        "|---|---|---|---|---|",
    ]
    names = list(ce["rounds"][0])
    for n in names:
        tps = [ce["tokens"] / r[n] for r in ce["rounds"] if n in r]
        what = "—" if n == "ceiling" else f"{w['bindings'][n[7:-1]]['what']} (`{w['bindings'][n[7:-1]]['env']}`)"
        lines.append(f"| {n} | {what} | {np.median(tps):.0f} | {min(tps):.0f} | {max(tps):.0f} |")
    if res.get("ceiling_checks"):
        c = res["ceiling_checks"]
        lines += [
            "",
            f"Agreement (max abs difference, one sequence): plugin c vs the ceiling's logits "
            f"{c['plugin_vs_ceiling_logits_c']:.2e}, v vs their logsumexp {c['plugin_vs_ceiling_logits_v']:.2e}.",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """The machine's measured peak, written as a results file."""
    import argparse
    import json
    import sys
    from pathlib import Path

    # one OpenMP thread per CPU, pinned, before torch starts its pool
    os.environ.setdefault("OMP_PROC_BIND", "close")
    os.environ.setdefault("OMP_PLACES", "cores")
    from loadtests.bench import peak
    from loadtests.bench.machine import footer, loadavg, machine_info

    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench.ceiling", description=peak.__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a model directory: its layer and LM head shapes are measured too")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions per shape; the best counts")
    ap.add_argument("--out", type=Path, default=root / "loadtests" / "results")
    ap.add_argument("--machine")
    args = ap.parse_args(argv)
    config = json.loads((args.model / "config.json").read_text()) if args.model else None
    command = "python -m loadtests.bench.ceiling " + " ".join(argv if argv is not None else sys.argv[1:])
    start = loadavg()
    cpus = os.sched_getaffinity(0)
    res = peak.measure(config, args.reps, log=lambda m: print(m, file=sys.stderr, flush=True))
    os.sched_setaffinity(0, cpus)  # OMP_PROC_BIND bound this thread to one place; the footer counts every CPU
    info = machine_info()  # after: it imports torch, which must not start OpenMP before the CPUs are read
    res.update(
        command=command,
        machine=info,
        loadavg_start=start,
        loadavg_end=loadavg(),
        env={k: os.environ.get(k) for k in ("OMP_PROC_BIND", "OMP_PLACES")},
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{time.strftime('%Y-%m-%d')}-{args.machine or info['slug']}-ceiling"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [
        f"# The machine's measured matrix-product peak — {time.strftime('%Y-%m-%d')}",
        "",
        f"torch matmul, best of {args.reps} timed repetitions per shape, OpenMP threads pinned "
        f"({res['env']}), dtypes the CPU computes natively: {', '.join(res['dtypes'])}. Load average "
        f"{start} at start, {res['loadavg_end']} at end (a shared machine: the best repetition is kept).",
        "",
        *peak.markdown(res),
        "",
        "```",
        footer(info, args.model.name if args.model else "-", command),
        "```",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
