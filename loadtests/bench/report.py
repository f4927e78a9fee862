"""Benchmark results: ratios against their targets, Markdown + JSON, PNG plots (matplotlib)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

MiB = 2**20


def _median(xs):
    return statistics.median(xs) if xs else None


def _per_round(rounds: list[dict], f) -> list[float]:
    out = []
    for r in rounds:
        try:
            out.append(f(r))
        except (KeyError, ZeroDivisionError):
            pass
    return out


def compute_ratios(res: dict) -> list[dict]:
    """Every measured ratio with its target (None: reported, no target) and whether it is met."""
    out = []

    def add(key, name, values, target, op, how, unit="x"):
        if not values:
            return
        value = _median(values)
        met = None if target is None else (value >= target if op == ">=" else value <= target)
        out.append(
            {
                "key": key,
                "name": name,
                "value": value,
                "min": min(values),
                "max": max(values),
                "n": len(values),
                "target": target,
                "op": op,
                "met": met,
                "how": how,
                "unit": unit,
            }
        )

    thr = res.get("throughput")
    if thr:
        rounds = thr["rounds"]
        add(
            "service_overhead",
            "HTTP / in-process throughput (service overhead)",
            _per_round(rounds, lambda r: r["inproc"] / r["http"]),
            0.90,
            ">=",
            "tokens/s through POST /score at saturation over the same plugin engine driven in-process",
        )
        add(
            "service_overhead_tokens",
            "HTTP with per-token output / in-process throughput",
            _per_round(rounds, lambda r: r["inproc"] / r["http+tokens"]),
            None,
            ">=",
            "as above with return_tokens=true (per-token rewards in the JSON)",
        )
        add(
            "vs_stock0",
            "plugin time / stock vLLM prompt_logprobs=0 time",
            _per_round(rounds, lambda r: r["inproc"] / r["stock0"]),
            1.10,
            "<=",
            "same engine settings; prompt_logprobs=0 gives chosen-token log-probs only (no value terms)",
        )
        add(
            "http_vs_stock0",
            "HTTP time / stock vLLM prompt_logprobs=0 time (in-process)",
            _per_round(rounds, lambda r: r["http"] / r["stock0"]),
            None,
            "<=",
            "the whole service against the stock engine route without any server",
        )
        add(
            "vs_naive",
            "plugin throughput / naive transformers throughput",
            _per_round(rounds, lambda r: r["naive"] / r["inproc"]),
            None,
            ">=",
            "naive: transformers forward, full [T, V] logits, log_softmax, batch 1",
        )
        add(
            "http_vs_naive",
            "HTTP throughput / naive transformers throughput",
            _per_round(rounds, lambda r: r["naive"] / r["http"]),
            None,
            ">=",
            "the whole service against naive",
        )
    fv = res.get("full_vocab")
    if fv:
        rounds = fv["rounds"]
        full = [r["stockfull"] for r in rounds if "stockfull" in r]
        inproc = _median([r["inproc"] for r in rounds if "inproc" in r])
        stock0 = _median([r["stock0"] for r in rounds if "stock0" in r])
        if full and inproc:
            add(
                "vs_stockfull",
                "stock vLLM prompt_logprobs=-1 time / plugin time",
                [t / inproc for t in full],
                20.0,
                ">=",
                "full-vocabulary prompt log-probs (max_logprobs=-1), the only stock route to the exact logsumexp; "
                "small workload",
            )
        if full and stock0:
            add(
                "stockfull_vs_stock0",
                "stock prompt_logprobs=-1 time / prompt_logprobs=0 time",
                [t / stock0 for t in full],
                None,
                ">=",
                "what the full vocabulary costs the stock route",
            )
    mem = res.get("memory")
    if mem and mem.get("plugin") and mem.get("naive"):
        p, n = mem["plugin"], mem["naive"]
        s = res["engine_settings"]
        budget = 2 * s["logits_chunk_rows"] * res["model"]["vocab_size"] * 4
        growth = p[-1]["extra_bytes"] - p[0]["extra_bytes"]
        add(
            "plugin_mem_growth",
            f"plugin extra memory growth {p[0]['tokens']} -> {p[-1]['tokens']} tokens",
            [growth / MiB],
            budget / MiB,
            "<=",
            f"must stay flat: target = 2 x logits_chunk_rows x vocab x 4 B ({budget / MiB:.0f} MiB), "
            "i.e. no term that grows with the sequence",
            unit="MiB",
        )
        add(
            "naive_mem_growth",
            f"naive extra memory growth {n[0]['tokens']} -> {n[-1]['tokens']} tokens",
            [(n[-1]["extra_bytes"] - n[0]["extra_bytes"]) / MiB],
            None,
            "<=",
            "full [T, V] logits and log-probs",
            unit="MiB",
        )
        if p[-1]["extra_bytes"] > 0:
            add(
                "mem_ratio",
                f"naive / plugin extra memory at {p[-1]['tokens']} tokens",
                [n[-1]["extra_bytes"] / max(p[-1]["extra_bytes"], 1)],
                None,
                ">=",
                "peak RSS rise for one sequence",
            )
    lat = res.get("latency")
    if lat and lat.get("worst_p99_past_knee_s") is not None and lat.get("p99_bound_s"):
        step = lat.get("engine_step_tokens", 0)
        add(
            "p99_past_knee",
            "worst p99 past the knee (accepted requests)",
            [lat["worst_p99_past_knee_s"]],
            lat["p99_bound_s"],
            "<=",
            f"bound = queue_timeout + (max_inflight_tokens + engine step) / capacity = {lat['queue_timeout_s']:g} s + "
            f"({lat['max_inflight_tokens']} + {step}) / {lat['capacity_tokens_per_s']:.0f} tokens/s",
            unit="s",
        )
    if lat and lat.get("p99_growth_past_limit") is not None:
        lo, hi = lat["limited_offered_rps"]
        add(
            "p99_growth",
            f"p99 at {hi:.1f} / at {lo:.1f} req/s offered (both past the admission limit)",
            [lat["p99_growth_past_limit"]],
            1.10,
            "<=",
            "p99 stays flat while the offered load grows: the excess waits at most queue_timeout, then gets 429",
        )
    from loadtests.bench import ceiling

    ceiling.ratios(res, add)
    return out


# --------------------------------------------------------------------------- plots


def _save(plt, fig, res: dict, path: Path) -> Path:
    """Stamp the machine, model and command under the figure (every figure carries them), write it, close it."""
    from loadtests.bench.machine import footer

    fig.text(
        0.01,
        0.005,
        footer(res["machine"], res["model"]["describe"], res["command"]),
        fontsize=6.5,
        family="monospace",
        va="bottom",
        ha="left",
        wrap=True,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _new_fig(n_axes: int = 1, width: float = 11):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_axes, figsize=(width, 5.6))
    fig.subplots_adjust(bottom=0.27, top=0.84, wspace=0.3)
    return plt, fig, axes


LABELS = {
    "http": "HTTP /score",
    "http+tokens": "HTTP /score\n+per-token",
    "inproc": "plugin\nin-process",
    "stock0": "stock vLLM\nprompt_lp=0",
    "stockfull": "stock vLLM\nprompt_lp=-1",
    "naive": "naive\ntransformers",
}
NAMES = {
    "http": "HTTP /score",
    "http+tokens": "HTTP /score, return_tokens",
    "inproc": "plugin engine in-process",
    "stock0": "stock vLLM prompt_logprobs=0",
    "stockfull": "stock vLLM prompt_logprobs=-1 (max_logprobs=-1)",
    "naive": "naive transformers + log_softmax",
}


def plot_throughput(res: dict, path: Path) -> Path | None:
    thr, fv = res.get("throughput"), res.get("full_vocab")
    if not thr:
        return None
    plt, fig, (ax1, ax2) = _new_fig(2)
    names = list(thr["tokens_per_s"])
    med = [thr["tokens_per_s"][n]["median"] for n in names]
    lo = [max(0.0, m - thr["tokens_per_s"][n]["min"]) for n, m in zip(names, med)]
    hi = [max(0.0, thr["tokens_per_s"][n]["max"] - m) for n, m in zip(names, med)]
    colors = ["C0", "C0", "C1", "C2", "C3"][: len(names)]
    ax1.bar(range(len(names)), med, yerr=[lo, hi], color=colors, capsize=4)
    ax1.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names], fontsize=7.5)
    ax1.set_ylabel("tokens / s (median, min-max over rounds)")
    ax1.set_title("Saturation\n" + res["workloads"]["saturation"].replace(", ", ",\n", 1), fontsize=8)
    for i, m in enumerate(med):
        ax1.text(i, m, f"{m:.0f}", ha="center", va="bottom", fontsize=7)
    if fv:
        tok = fv["tokens"]
        per = {}
        for r in fv["rounds"]:
            for k, t in r.items():
                per.setdefault(k, []).append(tok / t)
        names2 = [n for n in ("inproc", "stock0", "stockfull") if n in per]
        vals = [statistics.median(per[n]) for n in names2]
        ax2.bar(range(len(names2)), vals, color=["C1", "C2", "C4"][: len(names2)])
        ax2.set_yscale("log")
        ax2.set_xticks(range(len(names2)), [LABELS.get(n, n) for n in names2], fontsize=7.5)
        ax2.set_ylabel("tokens / s (log)")
        ax2.set_title("Full vocabulary\n" + res["workloads"]["full_vocab"].replace(", ", ",\n", 1), fontsize=8)
        for i, v in enumerate(vals):
            ax2.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle("Throughput, side by side in one run", fontsize=11)
    return _save(plt, fig, res, path)


def plot_memory(res: dict, path: Path) -> Path | None:
    mem = res.get("memory")
    if not mem:
        return None
    plt, fig, (ax1, ax2) = _new_fig(2)
    for name, color in (("plugin", "C1"), ("naive", "C3")):
        rows = mem.get(name) or []
        x = [r["tokens"] for r in rows]
        label = "plugin engine (vLLM, chunked)" if name == "plugin" else "naive (transformers, full logits)"
        ax1.plot(x, [r["extra_bytes"] / MiB for r in rows], "o-", color=color, label=label)
        ax2.plot(x, [r["peak_bytes"] / MiB for r in rows], "o-", color=color, label=name)
    for ax, title in (
        (ax1, "extra memory while scoring one sequence (MiB)"),
        (ax2, "peak resident memory, all processes (MiB)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Memory vs sequence length: plugin (chunked logsumexp) vs naive (full logits)", fontsize=11)
    return _save(plt, fig, res, path)


def plot_latency(res: dict, path: Path) -> Path | None:
    lat = res.get("latency")
    if not lat or not lat["steps"]:
        return None
    plt, fig, ax = _new_fig(1, width=10)
    steps = lat["steps"]
    x = [s["offered_rps"] for s in steps]
    for key, style in (("p50_s", "o-"), ("p95_s", "s-"), ("p99_s", "^-")):
        ax.plot(x, [s[key] if s[key] is not None else float("nan") for s in steps], style, label=key[:-2])
    if lat.get("p99_bound_s"):
        ax.axhline(lat["p99_bound_s"], color="grey", ls=":", label="p99 bound (admission)")
    if lat.get("knee_index") is not None:
        ax.axvline(x[lat["knee_index"]], color="k", ls="--", alpha=0.5, label="knee")
    ax.set_xlabel("offered load (requests / s)")
    ax.set_ylabel("latency of accepted requests (s)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, [s["goodput_rps"] for s in steps], "D-", color="C3", label="goodput (req/s)")
    ax2.plot(x, x, ":", color="C3", alpha=0.4, label="offered = goodput")
    if all("attempted_rps" in s for s in steps):
        ax2.plot(x, [s["attempted_rps"] for s in steps], "x--", color="C5", alpha=0.7, label="attempted (req/s)")
    for xi, s in zip(x, steps):
        if s["reject_ratio"] > 0:
            ax2.annotate(
                f"{s['reject_ratio']:.0%} 429",
                (xi, s["goodput_rps"]),
                textcoords="offset points",
                xytext=(0, -14),
                ha="center",
                fontsize=7,
                color="C4",
            )
    ax2.set_ylabel("requests / s")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    fig.suptitle(
        f"Latency vs offered load (locust step run): {lat['request']}, admission limit "
        f"{lat['max_inflight_tokens']} tokens, queue timeout {lat['queue_timeout_s']:g} s",
        fontsize=9,
    )
    return _save(plt, fig, res, path)


# --------------------------------------------------------------------------- markdown


def _fmt(x, unit="x"):
    if x is None:
        return "—"
    if unit == "x":
        return f"{x:.3g}x" if x < 100 else f"{x:.0f}x"
    if unit == "MiB":
        return f"{x:.1f} MiB"
    return f"{x:.2f} {unit}"


def markdown(res: dict, ratios: list[dict], figures: dict[str, str]) -> str:
    m = res["machine"]
    hw = m["gpu"] or f"{m['cpu']}, {m['cpus']} CPUs ({m['isa']}), {m['memory_gib']} GiB RAM"
    lines = [
        f"# EndoRM benchmark — {res['date']} — {m['slug']}",
        "",
        f"- machine: {hw}; {m['os']}",
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f", python {m['python']}, git {m['git']}",
        f"- model: {res['model']['describe']} (generated: `{Path(res['model']['path']).name}`)",
        "- engine settings (every vLLM route): " + ", ".join(f"{k}={v}" for k, v in res["engine_settings"].items()),
        f"- command: `{res['command']}`",
    ]
    if res.get("server_command"):
        lines.append(f"- server: `{res['server_command']}`")
    la = res.get("loadavg", {})
    lines.append(
        "- load average (1/5/15 min) at start / end: "
        f"{la.get('start')} / {la.get('end')} (other work on the machine shows here)"
    )
    lines.append(
        f"- run time: {res.get('elapsed_s', 0):.0f} s"
        + (" (`--quick`: a harness check, not a result)" if res.get("quick") else "")
    )
    lines += [
        "",
        "## Ratios against targets",
        "",
        "| measure | value (median) | min–max | target | met | how |",
        "|---|---|---|---|---|---|",
    ]
    for r in ratios:
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        target = "—" if r["target"] is None else f"{r['op']} {_fmt(r['target'], r['unit'])}"
        spread = f"{_fmt(r['min'], r['unit'])}–{_fmt(r['max'], r['unit'])}" if r["n"] > 1 else ""
        lines.append(f"| {r['name']} | {_fmt(r['value'], r['unit'])} | {spread} | {target} | {met} | {r['how']} |")
    if res.get("checks"):
        c = res["checks"]
        lines += [
            "",
            "Agreement on one sequence (max abs difference): "
            f"plugin vs naive c {c['plugin_vs_naive_c']:.2e}, v {c['plugin_vs_naive_v']:.2e}; "
            f"plugin log-prob vs stock prompt_logprobs=0 {c['plugin_vs_stock0_logprob']:.2e}.",
        ]
    thr = res.get("throughput")
    if thr:
        lines += [
            "",
            "## Throughput",
            "",
            f"Saturating workload: {res['workloads']['saturation']} "
            f"({thr['tokens']} tokens per round, {len(thr['rounds'])} rounds, order rotated each round).",
            "",
            "| route | tokens/s median | min | max |",
            "|---|---|---|---|",
        ]
        for name, s in thr["tokens_per_s"].items():
            lines.append(f"| {NAMES.get(name, name)} | {s['median']:.0f} | {s['min']:.0f} | {s['max']:.0f} |")
    fv = res.get("full_vocab")
    if fv:
        lines += [
            "",
            f"Full-vocabulary workload: {res['workloads']['full_vocab']} ({fv['tokens']} tokens):",
            "",
            "| route | seconds (per round) | tokens/s |",
            "|---|---|---|",
        ]
        names = []
        for r in fv["rounds"]:
            names += [n for n in r if n not in names]
        for n in names:
            ts = [r[n] for r in fv["rounds"] if n in r]
            lines.append(
                f"| {NAMES.get(n, n)} | {', '.join(f'{t:.2f}' for t in ts)} | "
                f"{fv['tokens'] / statistics.median(ts):.1f} |"
            )
    mem = res.get("memory")
    if mem:
        lines += [
            "",
            "## Memory vs sequence length",
            "",
            "Extra = rise of the peak resident set while one sequence is scored, summed over the process "
            "and its children (engine core, worker); KV cache and weights are allocated before and not counted.",
            "",
            "| tokens | plugin extra | naive extra | plugin peak | naive peak |",
            "|---|---|---|---|---|",
        ]
        by_len = {}
        for name in ("plugin", "naive"):
            for r in mem.get(name, []):
                by_len.setdefault(r["tokens"], {})[name] = r
        for n in sorted(by_len):
            p, q = by_len[n].get("plugin"), by_len[n].get("naive")

            def mb(row, key):
                return f"{row[key] / MiB:.0f} MiB" if row else "—"

            lines.append(
                f"| {n} | {mb(p, 'extra_bytes')} | {mb(q, 'extra_bytes')} | {mb(p, 'peak_bytes')} | {mb(q, 'peak_bytes')} |"
            )
    lat = res.get("latency")
    if lat:
        k = lat["knee_index"]
        knee_text = (
            "none (the first step already saturates)" if k is None else f"{lat['knee_offered_rps']:.2f} req/s offered"
        )
        lines += [
            "",
            "## Latency vs offered load (locust)",
            "",
            f"Request: {lat['request']}; each user sends one every {lat['pacing_s']:g} s; admission limit "
            f"{lat['max_inflight_tokens']} tokens in flight, queue timeout {lat['queue_timeout_s']:g} s. "
            f"Knee: {knee_text}; "
            f"capacity {lat['capacity_rps']:.2f} req/s ({lat['capacity_tokens_per_s']:.0f} tokens/s); "
            f"p99 bound past the knee {_fmt(lat['p99_bound_s'], 's')}.",
            "",
            "| users | offered req/s | attempted req/s | goodput req/s | tokens/s | p50 | p95 | p99 | 429 share |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, s in enumerate(lat["steps"]):
            mark = " (knee)" if i == k else ""
            lines.append(
                f"| {s['users']}{mark} | {s['offered_rps']:.2f} | {s.get('attempted_rps', 0):.2f} | "
                f"{s['goodput_rps']:.2f} | "
                f"{s['goodput_tokens_per_s']:.0f} | {_fmt(s['p50_s'], 's')} | {_fmt(s['p95_s'], 's')} | "
                f"{_fmt(s['p99_s'], 's')} | {s['reject_ratio']:.0%} |"
            )
    prof = res.get("profile")
    if prof:
        lines += [
            "",
            "## Profile (py-spy, server under saturating HTTP load)",
            "",
            f"{prof['seconds']:g} s sampled at {prof.get('tokens_per_s_while_profiled', 0):.0f} tokens/s; "
            "share of wall time each process was busy, and of its samples each part was on the stack "
            f"(raw collapsed stacks: {', '.join(f'`{f}`' for f in prof.get('files', {}).values())}).",
            "",
            "| process | busy | main parts |",
            "|---|---|---|",
        ]
        for name in ("api", "core", "worker"):
            p = prof.get(name)
            if not p:
                continue
            if p.get("parts"):
                parts = "; ".join(f"{k} {v:.0%}" for k, v in p["parts"].items())
            else:
                parts = "top of stack: " + "; ".join(f"{f} {v:.0%}" for f, v in p.get("leaves", [])[:4])
            lines.append(f"| {name} | {p['active_share']:.0%} | {parts} |")
    from loadtests.bench import ceiling

    lines += ceiling.markdown(res)
    if figures:
        lines += ["", "## Figures", ""] + [f"![{k}]({v})" for k, v in figures.items()]
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def write_report(res: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ratios = compute_ratios(res)
    res["ratios"] = ratios
    figures = {}
    for kind, fn in (("throughput", plot_throughput), ("memory", plot_memory), ("latency", plot_latency)):
        path = fn(res, out_dir / f"{stem}-{kind}.png")
        if path is not None:
            figures[kind] = path.name
    res["figures"] = figures
    md = out_dir / f"{stem}.md"
    js = out_dir / f"{stem}.json"
    md.write_text(markdown(res, ratios, figures))
    js.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return [md, js, *(out_dir / f for f in figures.values())]
