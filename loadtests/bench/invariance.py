"""What ``--batch-invariant`` costs: throughput with the mode on and off, side by side in one run.

    python -m loadtests.bench.invariance [--model DIR] [--data ../shared/data/rm-bench-chat.jsonl] [--quick]

Two real ``endorm serve`` processes of the same model on 127.0.0.1, the same flags but
``--batch-invariant``, both alive for the whole run (only one is driven at a time). Workloads:

- ``pairs`` (issue 21's, loadtests/bench/fast_default.py ``workload``): ``/score`` requests of one chat
  item each (a 60-word user turn, a 200-word response, chat template and tokenization in the timing),
  16 in flight.
- ``grpo`` (loadtests/bench/grpo.py's groups): one ``/score`` request per group of G responses of R
  tokens to one P-token prompt (group-aware scoring: one leader, siblings from the prefix cache), token
  ids cut from RM-Bench text; fresh prompts every round.

Rounds interleave the two servers (order alternated) on the same items; the ratio on/off of throughput
is taken within each round, then the median (which is what survives a machine shared with other work).
Every round also checks the two servers' answers agree to float32 precision (the mode changes the
kernels' shapes, not the math). Writes ``<out>/<date>-<machine>-invariance{-quick}.{json,md}``; the last
line printed is ``batch-invariant cost: pairs X.XXx, grpo Y.YYx`` (throughput on / off).
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
SERVERS = ("off", "on")
CONCURRENCY = 16


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def _post(client, body: dict, n: int) -> dict:
    resp = await client.post("/score", json=body)
    if resp.status_code != 200 or len(resp.json()["results"]) != n:
        raise RuntimeError(f"/score answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


async def run_pairs(client, items: list[dict]) -> tuple[float, list[float]]:
    """Every item as its own request, CONCURRENCY in flight; (wall seconds, scores in item order).
    The last element of the scores is the total number of tokens the server reports (usage)."""
    scores: list[float] = [0.0] * len(items)
    tokens = [0]
    it = iter(range(len(items)))

    async def worker() -> None:
        for i in it:
            out = await _post(client, {"items": [items[i]]}, 1)
            scores[i] = out["results"][0]["score"]
            tokens[0] += out["usage"]["total_tokens"]

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - t0, [*scores, float(tokens[0])]


async def run_groups(client, groups: list[tuple[list[int], list[list[int]]]]) -> tuple[float, list[float]]:
    """One request per group, one group at a time (a trainer's step); (wall seconds, scores)."""
    scores: list[float] = []
    t0 = time.perf_counter()
    for prompt, resps in groups:
        body = {"items": [{"prompt_ids": prompt, "response_ids": r} for r in resps]}
        scores += [r["score"] for r in (await _post(client, body, len(resps)))["results"]]
    return time.perf_counter() - t0, scores


async def main_async(args) -> dict:
    import httpx
    from transformers import AutoTokenizer

    from endorm_server.engine.dtype import machine_dtype
    from loadtests.bench.fast_default import workload
    from loadtests.bench.grpo import Text
    from loadtests.server import LocalServer

    model = str(args.model)
    g, p, r = args.group
    choice = machine_dtype("auto", model)
    items = workload(args.data, args.requests, 60, 200)
    text = Text(args.data, AutoTokenizer.from_pretrained(model))
    res: dict = {
        "command": args.command,
        "served_dtype": choice.dtype,
        "reason": choice.reason,
        "pairs": {"requests": len(items), "concurrency": CONCURRENCY, "tokens": 0},
        "grpo": {"g": g, "p": p, "r": r, "groups_per_round": args.groups, "scored_tokens": args.groups * g * r},
        "loadavg_start": loadavg(),
        "rounds": [],
    }
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    common = ["--model", model, "--kv-cache-gb", str(args.kv_cache_gb), "--max-model-len", str(max(p + r + 16, 1024))]
    common += ["--enforce-eager"] if args.enforce_eager else []
    servers: dict[str, LocalServer] = {}
    clients: dict[str, httpx.AsyncClient] = {}
    try:
        for name in SERVERS:  # started one after the other: two compiles at once would only slow both
            flag = "--batch-invariant" if name == "on" else "--no-batch-invariant"
            servers[name] = LocalServer(
                [*common, flag], log_path=workdir / f"server-{name}.log", ready_timeout_s=1800
            ).start()
            servers[name].wait_ready()
            clients[name] = httpx.AsyncClient(
                base_url=servers[name].url,
                timeout=1800,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            )
            card = (await clients[name].get("/v1/models")).json()["data"][0]
            res.setdefault("servers", {})[name] = {
                "fingerprint": card.get("system_fingerprint"),
                "dtype": card.get("dtype"),
                "batch_invariant": card.get("batch_invariant"),
                "determinism": card.get("determinism"),
            }
            log(f"server {name} ready: {res['servers'][name]}")
        for name in SERVERS:  # warm-up: first-call buffers, both workloads' shapes
            await run_pairs(clients[name], items[:4])
            await run_groups(clients[name], [text.group(min(g, 2), min(p, 128), min(r, 32))])
        for k in range(args.rounds):
            order = SERVERS if k % 2 == 0 else SERVERS[::-1]
            groups = [text.group(g, p, r) for _ in range(args.groups)]  # fresh prompts: no cache from before
            rnd: dict = {"order": list(order), "pairs": {}, "grpo": {}, "max_score_diff": {}}
            scores: dict = {"pairs": {}, "grpo": {}}
            for name in order:
                rnd["pairs"][name], got = await run_pairs(clients[name], items)
                scores["pairs"][name], res["pairs"]["tokens"] = got[:-1], int(got[-1])  # usage: every token
                log(f"round {k + 1}/{args.rounds} pairs {name}: {got[-1] / rnd['pairs'][name]:.0f} tokens/s")
            for name in order:
                rnd["grpo"][name], scores["grpo"][name] = await run_groups(clients[name], groups)
                tps = res["grpo"]["scored_tokens"] / rnd["grpo"][name]
                log(f"round {k + 1}/{args.rounds} grpo {name}: {tps:.0f} scored tokens/s")
            for w in ("pairs", "grpo"):
                a, b = scores[w]["on"], scores[w]["off"]
                rnd["max_score_diff"][w] = max(abs(x - y) for x, y in zip(a, b))
            res["rounds"].append(rnd)
            (workdir / "partial.json").write_text(json.dumps(res, indent=1) + "\n")
    finally:
        for c in clients.values():
            await c.aclose()
        for s in servers.values():
            s.stop()
    res["loadavg_end"] = loadavg()
    return res


def summarize(res: dict) -> dict:
    """Per workload: median throughput of each server and the median (min, max) within-round ratio on/off."""
    out = {}
    for w, tokens in (("pairs", res["pairs"]["tokens"]), ("grpo", res["grpo"]["scored_tokens"])):
        rounds = [r[w] for r in res["rounds"]]
        ratios = [t["off"] / t["on"] for t in rounds]  # throughput on / off
        out[w] = {
            "tps": {n: statistics.median(tokens / t[n] for t in rounds) for n in SERVERS},
            "ratio_on_off": [statistics.median(ratios), min(ratios), max(ratios)],
            "max_score_diff": max(r["max_score_diff"][w] for r in res["rounds"]),
        }
    return out


def report(res: dict, info: dict, model_name: str) -> str:
    s = res["summary"]
    g = res["grpo"]
    lines = [
        f"# --batch-invariant: throughput with the mode on vs off — {time.strftime('%Y-%m-%d')}",
        "",
        f"Two `endorm serve` of the same model, the same flags but `--batch-invariant`, alive together; "
        f"{len(res['rounds'])} interleaved rounds (order alternated), ratios within a round, medians. Served "
        f"dtype **{res['served_dtype']}** ({res['reason']}). Load average {res['loadavg_start']} at start, "
        f"{res['loadavg_end']} at end (the two servers and this client share the machine's CPUs; a start load "
        "near or above the CPU count means other work shared it too). The within-round ratio is the figure.",
        "",
        "| workload | off tok/s | on tok/s | on / off (min-max) | max score diff on vs off |",
        "|---|---|---|---|---|",
        f"| pairs: {res['pairs']['requests']} one-item chat requests, {res['pairs']['concurrency']} in flight, "
        f"{res['pairs']['tokens']} tokens | {s['pairs']['tps']['off']:.0f} | {s['pairs']['tps']['on']:.0f} | "
        f"**{s['pairs']['ratio_on_off'][0]:.3f}** ({s['pairs']['ratio_on_off'][1]:.3f}-"
        f"{s['pairs']['ratio_on_off'][2]:.3f}) | {s['pairs']['max_score_diff']:.3g} |",
        f"| grpo: {g['groups_per_round']} group(s) of G={g['g']} x R={g['r']} to P={g['p']}, scored tokens "
        f"| {s['grpo']['tps']['off']:.0f} | {s['grpo']['tps']['on']:.0f} | "
        f"**{s['grpo']['ratio_on_off'][0]:.3f}** ({s['grpo']['ratio_on_off'][1]:.3f}-"
        f"{s['grpo']['ratio_on_off'][2]:.3f}) | {s['grpo']['max_score_diff']:.3g} |",
        "",
        "Servers:",
        "",
    ]
    for name, card in res.get("servers", {}).items():
        lines.append(f"- `{name}`: {card}")
    lines += ["", "```", footer(info, model_name, res["command"]), "```", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench.invariance", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory [SmolLM2-135M-Instruct converted from its GGUF]")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "rm-bench-chat.jsonl")
    ap.add_argument("--quick", action="store_true", help="16 pair requests, one group of 8x512x64, 2 rounds")
    ap.add_argument("--requests", type=int, help="pair requests per round [48; --quick 16]")
    ap.add_argument("--group", help="G x P x R of the GRPO workload [8x1024x128; --quick 8x512x64]")
    ap.add_argument("--groups", type=int, default=1, help="groups per round")
    ap.add_argument("--rounds", type=int, help="[4; --quick 2]")
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--workdir", default="loadtests/out/invariance")
    ap.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    ap.add_argument("--machine")
    ap.add_argument("--report-from", type=Path, help="write the report of a run's (partial) JSON instead of running")
    return ap


def main(argv: list[str] | None = None) -> int:
    from loadtests.bench.grpo import DEFAULT_GGUF, default_model, parse_cells

    args = build_parser().parse_args(argv)
    args.requests = args.requests or (16 if args.quick else 48)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.group = parse_cells(args.group or ("8x512x64" if args.quick else "8x1024x128"))[0]
    if not args.data.is_file():
        raise SystemExit(f"--data: {args.data} is not a file (RM-Bench form: prompt, chosen, rejected)")
    args.model = args.model or (None if args.report_from else default_model())
    args.command = "python -m loadtests.bench.invariance " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine_info()
    os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
    res = json.loads(args.report_from.read_text()) if args.report_from else asyncio.run(main_async(args))
    res.setdefault("loadavg_end", loadavg())
    res["machine"], res["summary"] = res.get("machine", info), summarize(res)
    stem = args.out / f"{time.strftime('%Y-%m-%d')}-{args.machine or info['slug']}-invariance"
    stem = stem.with_name(stem.name + ("-quick" if args.quick else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report(res, info, Path(args.model or DEFAULT_GGUF).stem))
    print(stem.with_suffix(".md").read_text())
    s = res["summary"]
    print(f"batch-invariant cost: pairs {s['pairs']['ratio_on_off'][0]:.2f}x, grpo {s['grpo']['ratio_on_off'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
