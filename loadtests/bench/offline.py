"""Offline scoring side by side: ``endorm batch`` in-process, the same rows through ``endorm serve``
over HTTP with the SDK, and Ray Data with 1 and 2 actors; and the peak memory of a big file.

    python -m loadtests.bench.offline [--model DIR] [--rows 1000] [--rounds 2] [--quick]
    python -m loadtests.bench.offline --memory [--rows 100000]

Every route runs the same generated file (``--rows`` /score requests, each a group of ``--group``
responses to one prompt) as its own ``endorm batch`` process, as a user runs it:

- ``batch``: ``endorm batch IN -o OUT`` (one engine in-process, the server's app over ASGI);
- ``http-sdk``: a real ``endorm serve`` on 127.0.0.1, then ``endorm batch IN -o OUT --endpoint URL``
  (the same window of requests, sent by the SDK over HTTP);
- ``ray-1`` / ``ray-2``: ``endorm batch IN -o OUT --ray local --ray-actors K`` (a local Ray instance,
  one engine per actor; with 2 actors each engine gets half the cores, unbound: ``ray_env``).

Every route has the same window (``--max-in-flight``) and engine settings. The rate compared is
the one ``endorm batch`` prints after its first answer (tokens after it / time after it): engine
start is left out, and for Ray every actor's start and the first batch (Ray waits for every
actor); the wall time with the start is reported beside it. Rounds rotate the order; ratios are
taken within a round, then the median. ``--memory`` runs ``endorm batch`` on a big file of small
requests and on a tenth of it, sampling the RSS of its process (and of its tree, the engine
included) with the output file's size, so the RSS can be read at 10 %, 25 %, ... of the rows.
Writes ``<out>/<date>-<machine>-offline[-quick|-memory][-TAG].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from loadtests.bench.machine import footer, loadavg, machine_info
from loadtests.server import LocalServer

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ("batch", "http-sdk", "ray-1", "ray-2")
# the last stdout line of ``endorm batch`` (batch/runner.py Summary.describe)
SUMMARY = re.compile(
    r"(?P<written>\d+) lines written \((?P<errors>\d+) errors\).*; (?P<tokens>\d+) tokens in (?P<elapsed>[\d.]+) s"
)
FIRST = re.compile(r"first answer after (?P<first>[\d.]+) s(?: with (?P<first_tokens>\d+) tokens)?")


def parse_summary(stdout: str) -> dict:
    """``endorm batch``'s summary line -> its numbers; the steady rate leaves out the engine start and
    the first answer (for Ray: every actor's start and the first batch)."""
    line = next((x for x in reversed(stdout.strip().splitlines()) if SUMMARY.search(x)), None)
    if line is None:
        raise ValueError(f"no endorm batch summary in {stdout[-500:]!r}")
    m = SUMMARY.search(line)
    assert m is not None
    f = FIRST.search(line)
    tokens, elapsed = int(m["tokens"]), float(m["elapsed"])
    first = float(f["first"]) if f else 0.0
    first_tokens = int(f["first_tokens"]) if f and f["first_tokens"] else 0
    return {
        "written": int(m["written"]),
        "errors": int(m["errors"]),
        "tokens": tokens,
        "elapsed_s": elapsed,
        "first_answer_s": first,
        "first_tokens": first_tokens,
        "tokens_per_s": (tokens - first_tokens) / max(elapsed - first, 1e-9),
        "run_tokens_per_s": tokens / max(elapsed, 1e-9),
        "summary": line,
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def default_model() -> Path:
    from loadtests.bench.grpo import default_model as smollm2

    return smollm2()


def tiny_model() -> Path:
    from tests.conftest import tiny_model as build

    return build("llama")


def write_input(path: Path, rows: int, group: int) -> None:
    """``rows`` /score requests: ``group`` responses of a few sentences to one question each."""
    with open(path, "w") as f:
        for i in range(rows):
            a, b = i % 97, (7 * i) % 89
            prompt = f"Question {i}: a shop sells {a} apples and {b} pears. How many fruits does it sell in total?"
            items = [
                {"prompt": prompt, "response": f" It sells {a} + {b} = {a + b + k} fruits. " * (1 + k % 2)}
                for k in range(group)
            ]
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/score", "body": {"items": items}}))
            f.write("\n")


def write_small_input(path: Path, rows: int) -> None:
    """``rows`` single-item /score requests (the memory run: many lines, little work each)."""
    with open(path, "w") as f:
        for i in range(rows):
            body = {"items": [{"prompt": f"{i % 50} + 1 =", "response": f" {i % 50 + 1}"}]}
            f.write(json.dumps({"custom_id": f"m{i:07d}", "method": "POST", "url": "/score", "body": body}) + "\n")


def engine_flags(model: Path, args: argparse.Namespace) -> list[str]:
    flags = ["--model", str(model)]
    if args.quick:
        flags += ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-gb", "0.25", "--enforce-eager"]
    return flags + list(args.engine_flag or [])


def batch_cmd(inp: Path, out: Path, flags: list[str], window: int, *extra: str) -> list[str]:
    return (
        [sys.executable, "-m", "endorm_server.cli", "batch", str(inp), "-o", str(out)]
        + flags
        + [
            "--max-in-flight",
            str(window),
            *extra,
        ]
    )


class TreeSampler:
    """RSS of a process and of its whole tree (the engine processes included), sampled with the size of
    the output file, so the RSS can be read at a given fraction of the rows written."""

    def __init__(self, pid: int, output: Path | None = None, interval_s: float = 0.2) -> None:
        self.proc = psutil.Process(pid)
        self.output = output
        self.interval_s = interval_s
        self.peak_main = self.peak_tree = 0
        self.trace: list[tuple[float, int, int, int]] = []  # (s, main RSS, tree RSS, output bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                main = self.proc.memory_info().rss
                tree = main
                for child in self.proc.children(recursive=True):
                    try:
                        tree += child.memory_info().rss
                    except psutil.Error:  # a child that just ended
                        pass
            except psutil.Error:
                break
            size = self.output.stat().st_size if self.output is not None and self.output.exists() else 0
            self.peak_main = max(self.peak_main, main)
            self.peak_tree = max(self.peak_tree, tree)
            self.trace.append((round(time.monotonic() - self._t0, 1), main, tree, size))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def rss_at_fractions(trace: list, fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0)) -> dict[str, float]:
    """The batch process's largest RSS (MiB) seen up to each fraction of the final output size: flat when
    memory is bounded, rising with the rows when something keeps per-row state."""
    final = max((s[3] for s in trace), default=0)
    out: dict[str, float] = {}
    for frac in fractions:
        upto = [s[1] for s in trace if 0 < s[3] <= frac * final]
        if upto:
            out[f"{frac:g}"] = round(max(upto) / 2**20, 1)
    return out


def run_cli(
    cmd: list[str], log_path: Path, *, env: dict[str, str] | None = None, sample_output: Path | None = None
) -> dict:
    """One ``endorm batch`` process to its end; ``sample_output``: sample its RSS (and that file's size)."""
    t0 = time.monotonic()
    load0 = loadavg()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=logf, text=True, env={**os.environ, **(env or {})}, cwd=ROOT
        )
        sampler = TreeSampler(proc.pid, sample_output).__enter__() if sample_output else None
        stdout, _ = proc.communicate()
        if sampler:
            sampler.__exit__()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:5])} failed ({proc.returncode}); see {log_path}")
    out = parse_summary(stdout)
    out.update(wall_s=round(wall, 2), tokens_per_s_with_start=out["tokens"] / wall, loadavg=[load0, loadavg()])
    if env:
        out["env"] = env
    if sampler:
        out.update(peak_rss_main_mib=sampler.peak_main / 2**20, peak_rss_tree_mib=sampler.peak_tree / 2**20)
        out["rss_main_mib_at_output_fraction"] = rss_at_fractions(sampler.trace)
        out["rss_trace"] = sampler.trace[:: max(1, len(sampler.trace) // 200)]
    return out


def ray_env(actors: int, cpus: int) -> dict[str, str]:
    """Engines of several actors on one CPU node share its cores: Ray reserves CPUs but pins nothing, so
    each engine gets ``cpus // actors`` OpenMP threads, unbound (the OS places them). One actor keeps the
    default binding (every core), as ``endorm batch`` without Ray."""
    if actors <= 1:
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(max(1, cpus // actors))}


def run_route(route: str, inp: Path, work: Path, flags: list[str], args: argparse.Namespace) -> dict:
    out = work / f"{route}.jsonl"
    out.unlink(missing_ok=True)
    logp = work / f"{route}.log"
    if route == "batch":
        return run_cli(batch_cmd(inp, out, flags, args.max_in_flight), logp)
    if route == "http-sdk":
        server = LocalServer(flags, log_path=work / "server.log", new_session=False)
        server.start()
        try:
            server.wait_ready()
            return run_cli(batch_cmd(inp, out, [], args.max_in_flight, "--endpoint", server.url), logp)
        finally:
            server.stop()
    actors = int(route.split("-")[1])
    extra = ["--ray", "local", "--ray-actors", str(actors), "--ray-num-cpus", str(args.ray_num_cpus)]
    cpus = len(os.sched_getaffinity(0))
    return run_cli(batch_cmd(inp, out, flags, args.ray_batch_size, *extra), logp, env=ray_env(actors, cpus))


# (numerator, denominator, rate): "tokens_per_s" is the rate after the first answer; "run" is tokens over
# the whole run after engine start (the in-process and HTTP routes start their clock once the engine is
# ready; Ray's clock includes every actor's start, so Ray is compared after the first answer only)
RATIOS = (
    ("batch", "http-sdk", "run_tokens_per_s"),
    ("batch", "http-sdk", "tokens_per_s"),
    ("ray-2", "ray-1", "tokens_per_s"),
    ("ray-1", "batch", "tokens_per_s"),
)


def ratios(rounds: list[dict]) -> dict[str, dict]:
    """Each ratio within every round (same minutes, same load), then their median."""
    out = {}
    for a, b, rate in RATIOS:
        per = [x["routes"][a][rate] / x["routes"][b][rate] for x in rounds]
        key = f"{a}/{b}" + (" (whole run)" if rate == "run_tokens_per_s" else " (after first answer)")
        out[key] = {"median": statistics.median(per), "per_round": per}
    return out


def throughput(args: argparse.Namespace, work: Path, model: Path) -> dict:
    inp = work / "in.jsonl"
    write_input(inp, args.rows, args.group)
    flags = engine_flags(model, args)
    rounds = []
    for r in range(args.rounds):
        order = list(ROUTES[r % len(ROUTES) :] + ROUTES[: r % len(ROUTES)])
        res = {}
        for route in order:
            log(f"round {r + 1}: {route} (load {loadavg()})")
            res[route] = run_route(route, inp, work, flags, args)
            log(f"  {res[route]['summary']}")
            assert res[route]["written"] == args.rows and res[route]["errors"] == 0, res[route]
        rounds.append({"order": order, "routes": res})
    return {"rounds": rounds, "ratios": ratios(rounds), "input_rows": args.rows, "group": args.group}


def memory(args: argparse.Namespace, work: Path, model: Path) -> dict:
    out = {}
    for rows in sorted({args.rows // 10, args.rows}):
        inp = work / f"small-{rows}.jsonl"
        write_small_input(inp, rows)
        res_path = work / f"small-{rows}.out.jsonl"
        res_path.unlink(missing_ok=True)
        cmd = batch_cmd(inp, res_path, engine_flags(model, args), args.max_in_flight)
        log(f"memory: {rows} rows")
        res = run_cli(cmd, work / f"small-{rows}.log", sample_output=res_path)
        with open(res_path) as f:
            res["output_lines"] = sum(1 for _ in f)
        res["input_mib"] = inp.stat().st_size / 2**20
        res["output_mib"] = res_path.stat().st_size / 2**20
        log(
            f"  peak RSS main {res['peak_rss_main_mib']:.0f} MiB, tree {res['peak_rss_tree_mib']:.0f} MiB; "
            f"main by output fraction {res['rss_main_mib_at_output_fraction']}"
        )
        out[str(rows)] = res
    return out


SHARED = (
    "The machine was shared with other processes (other sessions' test runs) during the run: the load "
    "average before and after each route is in the JSON. Compare ratios within a round, not absolute rates."
)


RAY_CAVEAT = (
    "Ray's rate after its first answer is a scoring rate only on a file long enough that the first batch "
    "is a small part of it: the driver's first batch arrives once every actor's engine has started, and by "
    "then the actors may have scored most rows of a short file, which then drain in seconds. Ray's wall "
    "time (with every engine start) is the figure that holds on a short file."
)


def report_md(result: dict, info: dict, model: str, command: str) -> str:
    lines = [f"# Offline scoring ({'memory' if 'memory' in result else 'throughput'})", "", SHARED, ""]
    if "memory" in result:
        lines += [
            "| rows | input MiB | output MiB | peak RSS batch process MiB | peak RSS with engine MiB | "
            "batch process RSS MiB at 10/25/50/75/100 % of the output | wall s |"
        ]
        lines += ["|---:|---:|---:|---:|---:|---|---:|"]
        for rows, r in result["memory"].items():
            fr = " / ".join(f"{v:.0f}" for v in r["rss_main_mib_at_output_fraction"].values())
            lines.append(
                f"| {rows} | {r['input_mib']:.1f} | {r['output_mib']:.1f} | {r['peak_rss_main_mib']:.0f} | "
                f"{r['peak_rss_tree_mib']:.0f} | {fr} | {r['wall_s']:.0f} |"
            )
    else:
        t = result["throughput"]
        lines += [f"{t['input_rows']} /score requests of {t['group']} items each, every route the same file.", ""]
        lines += [
            "| round | route | tokens/s after the first answer | tokens/s whole run | first answer s | "
            "run s | wall s (with start) | load 1 min before -> after |"
        ]
        lines += ["|---:|---|---:|---:|---:|---:|---:|---|"]
        for i, rd in enumerate(t["rounds"], 1):
            for route in rd["order"]:
                r = rd["routes"][route]
                load = f"{r['loadavg'][0][0] if r['loadavg'][0] else '?'} -> {r['loadavg'][1][0] if r['loadavg'][1] else '?'}"
                lines.append(
                    f"| {i} | {route} | {r['tokens_per_s']:.0f} | {r['tokens'] / r['elapsed_s']:.0f} | "
                    f"{r['first_answer_s']:.1f} | {r['elapsed_s']:.1f} | {r['wall_s']:.1f} | {load} |"
                )
        lines += ["", "Ratios of tokens/s within each round, and their median:", ""]
        for k, v in t["ratios"].items():
            per = ", ".join(f"{x:.2f}" for x in v["per_round"])
            lines.append(f"- {k}: {v['median']:.2f}x (rounds: {per})")
        lines += ["", RAY_CAVEAT]
    lines += ["", "```", footer(info, model, command), "```", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench.offline", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="default: SmolLM2-135M (--quick: the tiny test llama)")
    ap.add_argument("--quick", action="store_true", help="the tiny test llama, float32, small engine")
    ap.add_argument("--memory", action="store_true", help="peak RSS on --rows small requests (and a tenth of them)")
    ap.add_argument("--rows", type=int, default=None, help="requests (default 1000; --memory: 100000)")
    ap.add_argument("--group", type=int, default=4, help="responses per request")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-in-flight", type=int, default=256)
    ap.add_argument("--ray-batch-size", type=int, default=64, help="rows per Ray batch (each actor overlaps two)")
    ap.add_argument("--ray-num-cpus", type=float, default=0.5, help="CPUs reserved per actor (2 fit on 2 cores)")
    ap.add_argument("--engine-flag", action="append", help="extra endorm flag for every engine (repeat)")
    ap.add_argument("--work", type=Path, default=ROOT / "loadtests" / "out" / "offline")
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    ap.add_argument("--tag", default="", help="added to the result file names")
    ap.add_argument("--report-from", type=Path, default=None, help="rewrite the ratios and .md of a result JSON")
    return ap


def report_from(path: Path) -> int:
    """Rewrite a result's ratios and its .md from its JSON (the measured numbers are not touched)."""
    result = json.loads(path.read_text())
    if "throughput" in result:
        for rd in result["throughput"]["rounds"]:
            for r in rd["routes"].values():
                r["run_tokens_per_s"] = r["tokens"] / max(r["elapsed_s"], 1e-9)
        result["throughput"]["ratios"] = ratios(result["throughput"]["rounds"])
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    model = Path(result["model"]).name
    path.with_suffix(".md").write_text(report_md(result, result["machine"], model, result["command"]))
    log(f"rewrote {path} and {path.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report_from is not None:
        return report_from(args.report_from)
    args.rows = args.rows or (100_000 if args.memory else 1000)
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or (tiny_model() if args.quick else default_model())
    info = machine_info()
    command = "python -m loadtests.bench.offline " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict = {"machine": info, "model": str(model), "command": command, "note": SHARED}
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.memory:
        result["memory"] = memory(args, args.work, model)
    else:
        result["throughput"] = throughput(args, args.work, model)
    kind = "-memory" if args.memory else "-quick" if args.quick else ""
    stem = f"{time.strftime('%Y-%m-%d')}-{info['slug']}-offline{kind}{'-' + args.tag if args.tag else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(report_md(result, info, model.name, command))
    log(f"wrote {args.out / stem}.{{json,md}}")
    if args.memory:
        for rows, r in result["memory"].items():
            print(f"{rows} rows: peak RSS {r['peak_rss_main_mib']:.0f} MiB (with engine {r['peak_rss_tree_mib']:.0f})")
    else:
        for k, v in result["throughput"]["ratios"].items():
            print(f"{k} {v['median']:.2f}x")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    sys.exit(main())
