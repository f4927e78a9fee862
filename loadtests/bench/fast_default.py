"""Issue 21 side by side in one run: dtypes, the HTTP front end, the machine's ceiling and the peers.

    python -m loadtests.bench.fast_default --model MODEL_DIR --gguf FILE.gguf \
        [--data ../shared/data/rm-bench-chat.jsonl] [--rounds 2] [--llama-python PY]

Workload (the issue's): 48 ``/score`` requests of one chat item each, 16 in flight: RM-Bench chat rows
whose longest response has >= 200 words, that response cut to 200 words, the prompt filled with the next
rows' prompts to 60 words (~300 tokens with the chat template). Every route gets the same sequences:

- ``http[DTYPE]``: POST /score with text (messages + response, so tokenization and chat templating are in
  the timing) to one ``endorm serve`` per ``--dtype`` (auto = the default, float32, bfloat16, float16 =
  vLLM's own CPU auto), all alive at once, default engine settings (compiled, CPU GEMM auto);
  ``http[auto]+tokens`` with ``return_tokens: true``.
- ``inproc``: the same plugin engine as the default server (``VllmEngine``, dtype auto resolved), fed the
  token ids, no HTTP: the front end ratio is http[auto] / inproc.
- ``torch-eager`` / ``torch-compile``: a plain torch forward of body + LM head in the served dtype, one
  sequence at a time on every core, nothing after the logits (the best plain forward: the ceiling's route).
- ``hf``: HF transformers in the served dtype computing what the plugin gives (c_i, v_i: logits, gather,
  logsumexp), one sequence at a time.
- ``stock0``: stock vLLM ``prompt_logprobs=0`` in the served dtype (chosen-token log-probs only).
- ``llama.cpp``: llama-cpp-python on the GGUF file (its own Q4_1 kernels), all-token logits, logsumexp in
  numpy, in a subprocess of ``--llama-python`` (a separate venv); skipped with the reason if it fails.

Rounds interleave every route (the order rotates each round); ratios are taken within a round, median
reported. Also: each server process's CPU seconds per HTTP run (API, engine core, worker; psutil) and a
py-spy profile of the API process, the model's FLOPs per token and the machine's peak for the served dtype.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from loadtests.bench import profile
from loadtests.bench.machine import footer, loadavg, machine_info
from loadtests.server import LocalServer

CONCURRENCY = 16
LLAMA_WORKER = r"""
import json, sys, time
import numpy as np
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), n_batch=int(sys.argv[2]), n_ubatch=int(sys.argv[2]),
            n_threads=int(sys.argv[3]), logits_all=True, verbose=False)
def stats(ids):
    llm.reset(); llm.eval(ids)
    logits = np.asarray(llm.scores[:len(ids)], dtype=np.float32)
    m = logits.max(-1, keepdims=True)
    v = (m[:, 0] + np.log(np.exp(logits - m).sum(-1)))
    c = logits[np.arange(len(ids) - 1), ids[1:]]
    return c, v
for line in sys.stdin:
    msg = json.loads(line)
    if msg["op"] == "check":
        c, v = stats(msg["seq"]); print(json.dumps({"c": c.tolist(), "v": v.tolist()}), flush=True)
    else:
        t0 = time.perf_counter()
        for s in msg["seqs"]:
            stats(s)
        print(json.dumps({"s": time.perf_counter() - t0}), flush=True)
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def workload(data: Path, n: int, prompt_words: int, response_words: int) -> list[dict]:
    """RM-Bench rows whose longest response has >= response_words words: that response cut to response_words;
    the prompt (median 15 words) followed by the next rows' prompts up to prompt_words words."""
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    out = []
    for i, r in enumerate(rows):
        resp = max((*r["chosen"], *r["rejected"]), key=lambda t: len(t.split())).split()
        if len(resp) < response_words:
            continue
        words = []
        for j in range(i, i + len(rows)):
            words += rows[j % len(rows)]["prompt"].split()
            if len(words) >= prompt_words:
                break
        out.append(
            {
                "messages": [{"role": "user", "content": " ".join(words[:prompt_words])}],
                "response": " ".join(resp[:response_words]),
            }
        )
        if len(out) == n:
            break
    return out


# ------------------------------------------------------------------------------------------- FLOPs


def model_flops_per_token(config: dict, context: float) -> dict:
    """2 x (matmul parameters) for body and LM head, attention 4 x layers x heads x head_dim x context."""
    h, L, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hd = config.get("head_dim") or h // heads
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter
    body = 2 * L * per_layer
    head = 2 * h * config["vocab_size"]
    attn = 4 * L * heads * hd * context
    return {
        "body": body,
        "lm_head": head,
        "attention": attn,
        "total": body + head + attn,
        "context_mean": context,
        "params_matmul_body": L * per_layer,
    }


def peak(dtype: str, flags: set[str], cpus: int, ghz: float, family: int | None) -> dict:
    """The machine's theoretical peak for the instructions the served dtype uses (documented assumptions)."""
    zen4 = family == 25 and "avx512f" in flags  # AMD family 19h with AVX-512: Zen 4 (AVX-512 on 2 x 256-bit pipes)
    if dtype == "bfloat16" and "amx_bf16" in flags:
        per_cycle, isa, src = (
            1024,
            "AMX-BF16 (TDPBF16PS)",
            (
                "Intel: one 16x16x32 bf16 tile product per 16 cycles "
                "per core = 1024 FLOPs/cycle (Intel optimization manual)"
            ),
        )
    elif dtype == "bfloat16" and "avx512_bf16" in flags:
        per_cycle = 64
        isa = "AVX512-BF16 (VDPBF16PS)"
        src = (
            "Zen 4: two 256-bit VDPBF16PS per cycle, 8 fp32 lanes x 2 bf16 products x 2 FLOPs each = 64 "
            "(AMD Zen 4 software optimization guide, no. 57647; uops.info)"
            if zen4
            else "one 512-bit VDPBF16PS per cycle: 16 lanes x 2 products x 2 FLOPs = 64 (assumed)"
        )
    else:
        per_cycle = 32 if zen4 else 64 if "avx512f" in flags else 32
        isa = "AVX-512 FP32 FMA" if "avx512f" in flags else "AVX2 FP32 FMA"
        src = (
            "Zen 4: two 256-bit FMA pipes (AVX-512 double-pumped): 2 x 8 lanes x 2 FLOPs = 32"
            if zen4
            else "two 512-bit FMA units (Xeon Scalable with two FMA ports): 2 x 16 lanes x 2 FLOPs = 64 (assumed)"
            if "avx512f" in flags
            else "two 256-bit FMA units: 2 x 8 x 2 = 32"
        )
    return {
        "dtype": dtype,
        "isa": isa,
        "flops_per_cycle_per_core": per_cycle,
        "source": src,
        "cores": cpus,
        "ghz": ghz,
        "ghz_source": "TSC / 'cpu MHz' of /proc/cpuinfo (KVM guest: nominal; boost unknown)",
        "flops_per_s": cpus * ghz * 1e9 * per_cycle,
    }


def measured_gemm_peak(dtype: str, threads: int, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a large square torch matmul in ``dtype`` on ``threads`` threads: what oneDNN / MKL reach."""
    import torch

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def cpu_facts() -> tuple[set[str], float, int | None]:
    flags, mhz, family = set(), 0.0, None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k == "flags" and not flags:
            flags = set(v.split())
        elif k == "cpu MHz" and not mhz:
            mhz = float(v)
        elif k == "cpu family" and family is None:
            family = int(v)
    return flags, mhz / 1000, family


# ------------------------------------------------------------------------------------------- drivers


async def run_concurrent(n: int, concurrency: int, send) -> float:
    it = iter(range(n))

    async def worker():
        for i in it:
            await send(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


class Http:
    def __init__(self, name: str, server: LocalServer, items: list[dict], return_tokens: bool) -> None:
        import httpx

        self.name, self.server, self.items, self.return_tokens = name, server, items, return_tokens
        self.client = httpx.AsyncClient(
            base_url=server.url, timeout=900, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
        )
        self.cpu: list[dict] = []

    async def run(self) -> float:
        import psutil

        from loadtests.bench import profile

        procs = {k: psutil.Process(p) for k, p in profile.server_processes(self.server.proc.pid).items()}
        before = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}

        async def send(i):
            r = await self.client.post("/score", json={"items": [self.items[i]], "return_tokens": self.return_tokens})
            if r.status_code != 200:
                raise RuntimeError(f"{self.name}: {r.status_code} {r.text[:200]}")

        wall = await run_concurrent(len(self.items), CONCURRENCY, send)
        self.cpu.append({k: round((sum(p.cpu_times()[:2]) - before[k]) / wall, 3) for k, p in procs.items()})
        return wall


class Inproc:
    name = "inproc"

    def __init__(self, engine, seqs) -> None:
        self.engine, self.seqs = engine, seqs

    async def run(self) -> float:
        async def send(i):
            await self.engine.token_stats(self.seqs[i])

        return await run_concurrent(len(self.seqs), CONCURRENCY, send)


class Sequential:
    """One sequence at a time (the route's own batching is none): torch forwards and llama.cpp."""

    def __init__(self, name: str, fn, seqs) -> None:
        self.name, self.fn, self.seqs = name, fn, seqs

    async def run(self) -> float:
        t0 = time.perf_counter()
        for s in self.seqs:
            self.fn(s)
        return time.perf_counter() - t0


class Stock:
    name = "stock0"

    def __init__(self, stock, seqs) -> None:
        self.stock, self.seqs = stock, seqs

    async def run(self) -> float:
        async def send(i):
            await self.stock.prompt_logprobs(self.seqs[i], 0)

        return await run_concurrent(len(self.seqs), CONCURRENCY, send)


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, python: str, gguf: str, seqs, threads: int) -> None:
        n_ctx = max(len(s) for s in seqs) + 8
        self.proc = subprocess.Popen(
            [python, "-c", LLAMA_WORKER, gguf, str(n_ctx), str(threads)],
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.seqs = seqs

    def call(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp worker died (exit {self.proc.wait()}): {self.proc.stderr.read()[-2000:]}")
        return json.loads(line)

    async def run(self) -> float:
        return self.call({"op": "run", "seqs": [list(s) for s in self.seqs]})["s"]

    def close(self) -> None:
        self.proc.kill()


def torch_routes(model_path: str, dtype: str, threads: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()

    def plain(seq):
        with torch.inference_mode():
            ids = torch.tensor([list(seq)])
            return model.lm_head(model.model(input_ids=ids).last_hidden_state)

    compiled_body = torch.compile(model.model, dynamic=True)

    def compiled(seq):
        with torch.inference_mode():
            ids = torch.tensor([list(seq)])
            return model.lm_head(compiled_body(input_ids=ids).last_hidden_state)

    def hf(seq):
        with torch.inference_mode():
            ids = torch.tensor([list(seq)])
            logits = model(input_ids=ids).logits[0].float()
            c = logits[:-1].gather(-1, ids[0, 1:, None])[:, 0]
            v = torch.logsumexp(logits, -1)
            return c.numpy(), v.numpy()

    return plain, compiled, hf


# ------------------------------------------------------------------------------------------- main


async def main_async(args) -> dict:
    from transformers import AutoTokenizer

    from endorm_server.config import Settings
    from endorm_server.engine.dtype import machine_dtype
    from endorm_server.engine.vllm_engine import VllmEngine
    from endorm_server.inputs.tokenization import PairEncoder
    from loadtests.bench.throughput import StockVllm, stock_engine_args

    model = str(args.model)
    items = workload(args.data, args.requests, args.prompt_words, args.response_words)
    enc = PairEncoder(AutoTokenizer.from_pretrained(model), vocab_size=49152)
    pairs = [enc.encode(**it) for it in items]
    seqs = [list(p.prompt_ids + p.response_ids) for p in pairs]
    tokens = sum(len(s) for s in seqs)
    served = machine_dtype("auto", model).dtype
    cpus = len(os.sched_getaffinity(0))
    res: dict = {
        "workload": {
            "requests": len(seqs),
            "concurrency": CONCURRENCY,
            "tokens": tokens,
            "tokens_per_sequence": [min(map(len, seqs)), max(map(len, seqs))],
            "response_tokens": sum(len(p.response_ids) for p in pairs),
        },
        "served_dtype": served,
        "reason": machine_dtype("auto", model).reason,
        "loadavg_start": loadavg(),
        "skipped": {},
    }
    log(f"workload: {res['workload']}; auto -> {served}")
    flags, ghz, family = cpu_facts()
    config = json.loads((Path(model) / "config.json").read_text())
    ctx = float(np.mean([len(s) for s in seqs])) / 2  # causal: a token attends to (position + 1) keys on average
    res["flops_per_token"] = model_flops_per_token(config, ctx)
    res["peak"] = {dt: peak(dt, flags, cpus, ghz, family) for dt in {served, "float32"}}
    res["gemm_peak_measured"] = {dt: measured_gemm_peak(dt, cpus) for dt in {served, "float32"}}
    log(
        f"flops/token {res['flops_per_token']['total'] / 1e6:.0f} M; peak {res['peak']}; "
        f"gemm {res['gemm_peak_measured']}"
    )

    common = [
        "--model",
        model,
        "--kv-cache-gb",
        str(args.kv_cache_gb),
        "--max-model-len",
        "2048",
        "--served-model-name",
        "smollm2-135m-instruct",
        *(["--enforce-eager"] if args.enforce_eager else []),
    ]
    servers: dict[str, LocalServer] = {}
    routes = []
    llama = None
    engine = stock = None
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    partial = workdir / "partial.json"
    try:
        for dt in args.dtypes.split(","):
            dtype, _, head = dt.partition("/")  # e.g. bfloat16/head-float32: a server with --head-dtype float32
            flags_dt = ([] if dtype == "auto" else ["--dtype", dtype]) + (
                ["--head-dtype", head.removeprefix("head-")] if head else []
            )
            servers[dt] = LocalServer(
                [*common, *flags_dt],
                log_path=workdir / f"server-{dt.replace('/', '-')}.log",
                new_session=False,
                ready_timeout_s=1800,
            ).start()
            log(f"server --dtype {dt}: started on {servers[dt].url}")
        for dt, srv in servers.items():
            srv.wait_ready()
            card = (await Http("x", srv, items, False).client.get("/v1/models")).json()["data"][0]
            res.setdefault("servers", {})[dt] = {"dtype": card.get("dtype"), "fingerprint": card["system_fingerprint"]}
            log(f"server --dtype {dt} ready: {res['servers'][dt]}")
            routes.append(Http(f"http[{dt}]", srv, items, False))
        routes.append(Http("http[auto]+tokens", servers["auto"], items, True))
        engine = VllmEngine(
            Settings(model=model, kv_cache_gb=args.kv_cache_gb, max_model_len=2048, enforce_eager=args.enforce_eager),
            model,
        )
        await engine.start()
        routes.append(Inproc(engine, seqs))
        if "stock" in args.peers:
            stock = StockVllm(stock_engine_args(engine.engine_args(), max_logprobs=0))
            await stock.start()
            routes.append(Stock(stock, seqs))
        plain, compiled, hf = torch_routes(model, served, cpus)
        routes += [
            Sequential(f"torch-{k}", {"eager": plain, "compile": compiled}[k], seqs) for k in args.torch.split(",") if k
        ]
        if "transformers" in args.peers:
            routes.append(Sequential("hf", hf, seqs))
        if "llama.cpp" in args.peers and args.llama_python and args.gguf:
            try:
                llama = LlamaCpp(args.llama_python, str(args.gguf), seqs, cpus)
                got = llama.call({"op": "check", "seq": seqs[0]})
                c_hf, v_hf = hf(seqs[0])
                res["llama_cpp_vs_hf"] = {
                    "max_dc": float(np.max(np.abs(np.array(got["c"]) - c_hf))),
                    "max_dv": float(np.max(np.abs(np.array(got["v"]) - v_hf))),
                }
                routes.append(llama)
            except Exception as exc:  # reported, not hidden
                res["skipped"]["llama.cpp"] = repr(exc)[:3000]
                log(f"llama.cpp skipped: {exc!r}"[:2000])
        for r in routes:  # warm-up: compile, first-call buffers
            await r.run()
            log(f"warm {r.name}")
        rounds = []
        for k in range(args.rounds):
            order = routes[k % len(routes) :] + routes[: k % len(routes)]
            times = {}
            for r in order:
                times[r.name] = await r.run()
                log(f"round {k + 1}/{args.rounds} {r.name:20s} {tokens / times[r.name]:7.0f} tokens/s")
            rounds.append(times)
        res["rounds"] = rounds
        res["cpu_seconds_per_wall_second"] = {r.name: r.cpu for r in routes if isinstance(r, Http)}
        partial.write_text(json.dumps(res, indent=1) + "\n")  # the timed part is kept whatever follows
        if args.py_spy and not profile.available():
            res["skipped"]["py-spy"] = "py-spy is not installed (pip install py-spy)"
        elif args.py_spy:
            pids = profile.server_processes(servers["auto"].proc.pid)
            spy = profile.start(pids, args.py_spy, workdir, "pyspy")
            http_tok = Http("pyspy", servers["auto"], items * 2, True)
            await http_tok.run()
            for proc, _ in spy.values():
                proc.wait(60)
            res["pyspy_api"] = profile.summarize({k: p for k, (_, p) in spy.items()}, args.py_spy)
            res["pyspy_api_cpu"] = http_tok.cpu
    finally:
        if llama:
            llama.close()
        if stock:
            stock.close()
        if engine:
            await engine.shutdown()
        for srv in servers.values():
            srv.stop()
    res["loadavg_end"] = loadavg()
    return res


def median_ratio(rounds: list[dict], num: str, den: str) -> tuple[float, float, float] | None:
    """Throughput ratio num / den (= time den / time num) per round: median, min, max."""
    xs = [r[den] / r[num] for r in rounds if num in r and den in r]
    return (statistics.median(xs), min(xs), max(xs)) if xs else None


def report(res: dict, command: str, info: dict) -> str:
    rounds, tokens = res["rounds"], res["workload"]["tokens"]
    names = list(rounds[0])
    tps = {n: statistics.median(tokens / r[n] for r in rounds) for n in names}
    best_dtype = max((n for n in names if n.startswith("http[") and n.endswith("]")), key=tps.get)
    served = res["served_dtype"]
    fpt = res["flops_per_token"]
    pk = res["peak"][served]
    lines = [
        f"# Fast by default (issue 21): dtypes, front end, ceiling, peers — {time.strftime('%Y-%m-%d')}",
        "",
        f"Workload: {res['workload']['requests']} `/score` requests of one chat item (RM-Bench: a 60-word user turn, "
        f"a 200-word response; {res['workload']['tokens_per_sequence'][0]}-"
        f"{res['workload']['tokens_per_sequence'][1]} tokens, {tokens} in all), {CONCURRENCY} in flight. "
        f"`--dtype auto` here: **{served}** ({res['reason']}). {len(rounds)} interleaved rounds, order rotated; "
        f"medians of per-round values. Load average {res['loadavg_start']} at start, {res['loadavg_end']} at end.",
        "",
        "| route | tokens/s (median) | per round |",
        "|---|---|---|",
    ]
    for n in names:
        lines.append(f"| {n} | {tps[n]:.0f} | {', '.join(f'{tokens / r[n]:.0f}' for r in rounds)} |")
    lines += ["", "## Targets", "", "| measure | value (median, min-max) | target |", "|---|---|---|"]

    def row(label, num, den, target=""):
        m = median_ratio(rounds, num, den)
        if m:
            lines.append(f"| {label} | {m[0]:.2f} ({m[1]:.2f}-{m[2]:.2f}) | {target} |")

    row(f"default (`auto`) HTTP / best dtype HTTP ({best_dtype})", "http[auto]", best_dtype, ">= 0.95")
    for n in names:
        if n.startswith("http[") and n.endswith("]") and n != "http[auto]":
            row(f"http[auto] / {n}", "http[auto]", n)
    row("HTTP front end / in-process engine, return_tokens off", "http[auto]", "inproc", ">= 0.9")
    row("HTTP front end / in-process engine, return_tokens on", "http[auto]+tokens", "inproc", ">= 0.9")
    for peer in ("stock0", "hf", "llama.cpp", "torch-eager", "torch-compile"):
        row(
            f"plugin (in-process) / {peer}",
            "inproc",
            peer,
            "> 1 (ahead)" if peer in ("stock0", "hf", "llama.cpp") else "",
        )
        row(f"plugin over HTTP (default) / {peer}", "http[auto]", peer)
    lines += [
        "",
        "## Against the machine's peak",
        "",
        f"Model FLOPs per token: body {fpt['body'] / 1e6:.1f} M + LM head {fpt['lm_head'] / 1e6:.1f} M + attention "
        f"{fpt['attention'] / 1e6:.1f} M (mean causal context {fpt['context_mean']:.0f}) = **{fpt['total'] / 1e6:.1f} M** "
        "(2 x matmul parameters; attention 4 x layers x heads x head_dim x context).",
        "",
        f"Peak for {served}: {pk['cores']} cores x {pk['ghz']:.2f} GHz x {pk['flops_per_cycle_per_core']} FLOPs/cycle "
        f"({pk['isa']}) = **{pk['flops_per_s'] / 1e9:.0f} GFLOP/s**. FLOPs/cycle: {pk['source']}. Clock: "
        f"{pk['ghz_source']}. A large torch matmul ({served}, 2048^3) measured "
        f"{res['gemm_peak_measured'][served] / 1e9:.0f} GFLOP/s here "
        f"(float32: {res['gemm_peak_measured'].get('float32', 0) / 1e9:.0f}).",
        "",
        "| route | tokens/s | GFLOP/s | fraction of peak | fraction of measured GEMM |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        if n.startswith("http[") and n not in ("http[auto]", "http[auto]+tokens") and n != f"http[{served}]":
            continue
        g = tps[n] * fpt["total"]
        lines.append(
            f"| {n} | {tps[n]:.0f} | {g / 1e9:.1f} | {g / pk['flops_per_s']:.2f} | "
            f"{g / res['gemm_peak_measured'][served]:.2f} |"
        )
    cpu = res.get("cpu_seconds_per_wall_second", {})
    if cpu:
        lines += [
            "",
            "## CPU per HTTP run (CPU seconds per wall second, psutil; 2 cores = 2.0)",
            "",
            "| route | API process | engine core | worker |",
            "|---|---|---|---|",
        ]
        for n, runs in cpu.items():
            for c in runs:
                lines.append(f"| {n} | {c.get('api', 0):.2f} | {c.get('core', 0):.2f} | {c.get('worker', 0):.2f} |")
    if res.get("pyspy_api"):
        lines += [
            "",
            "## py-spy on the default server (return_tokens on, 2 x the workload)",
            "",
            f"CPU seconds per wall second during the profiled run (psutil): {res.get('pyspy_api_cpu')}",
            "",
            "| process | samples | active share | top frames (share of its samples, inclusive) |",
            "|---|---|---|---|",
        ]
        for proc, e in res["pyspy_api"].items():
            top = "; ".join(f"{f} {x:.0%}" for f, x in e.get("top", [])[:8])
            lines.append(f"| {proc} | {e['samples']} | {e['active_share']:.2f} | {top} |")
            if e.get("parts"):
                lines.append(f"| {proc} parts | | | " + "; ".join(f"{k} {v:.0%}" for k, v in e["parts"].items()) + " |")
    if res.get("llama_cpp_vs_hf"):
        lines += [
            "",
            f"llama.cpp (Q4_1 kernels on the GGUF) vs HF transformers ({served}, dequantized weights) on one "
            f"sequence: max |dc| {res['llama_cpp_vs_hf']['max_dc']:.3g}, max |dv| {res['llama_cpp_vs_hf']['max_dv']:.3g}.",
        ]
    for k, v in res["skipped"].items():
        lines += ["", f"**{k} skipped**: `{v[:1500]}`"]
    lines += [
        "",
        "Servers: "
        + ", ".join(f"`--dtype {k}` -> {v['dtype']} ({v['fingerprint']})" for k, v in res.get("servers", {}).items()),
        "",
        "```",
        footer(info, "SmolLM2-135M-Instruct", command),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench.fast_default", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/rm-bench-chat.jsonl"))
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--prompt-words", type=int, default=60)
    ap.add_argument("--response-words", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--dtypes",
        default="auto,float32,bfloat16,float16",
        help="one server each: a --dtype, optionally /head-float32 or /head-model for its --head-dtype",
    )
    ap.add_argument("--peers", default="stock,transformers,llama.cpp")
    ap.add_argument("--torch", default="eager,compile", help="plain torch forwards to time: eager, compile")
    ap.add_argument("--llama-python", help="python of a venv with llama-cpp-python")
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--enforce-eager", action="store_true", help="every engine eager (a quick check of the harness)")
    ap.add_argument("--py-spy", type=float, default=15.0)
    ap.add_argument("--workdir", default="loadtests/out/fast-default")
    ap.add_argument("--out", type=Path, default=Path("loadtests/results"))
    ap.add_argument("--machine")
    ap.add_argument("--report-from", type=Path)
    args = ap.parse_args(argv)
    command = "python -m loadtests.bench.fast_default " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine_info()
    stem = args.out / f"{time.strftime('%Y-%m-%d')}-{args.machine or info['slug']}-fast-default"
    if args.report_from:
        res = json.loads(args.report_from.read_text())
        command = res.get("command", command)
    else:
        os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
        res = asyncio.run(main_async(args))
        res["command"], res["machine"] = command, info
        stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    stem = args.report_from.with_suffix("") if args.report_from else stem
    stem.with_suffix(".md").write_text(report(res, command, info))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
