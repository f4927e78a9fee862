"""The machine's measured matrix-product peak: what "fraction of peak" figures are divided by.

A nominal peak (cores x clock x FLOPs per cycle) rests on a clock a virtual machine does not report
and on an instruction mix no library reaches, so the ceiling is measured instead: the best of many
repetitions of torch matrix products at several shapes (square, and the shapes of the model's own
layers and LM head), threads pinned one per CPU, in every dtype the CPU computes natively (float32
always; bfloat16 where it reports avx512_bf16 or AMX). Beside it, what the numbers rest on: the
CPU topology (separate cores or SMT siblings, as the kernel reports it, and as measured: one
thread's rate against all threads'), and the clock reached, timed with a chain of dependent integer
adds (one cycle each) on every CPU at once.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

CLOCK_SRC = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    long iters = atol(argv[1]), x = 0;
    double best = 1e9;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now();
        for (long i = 0; i < iters; i++) {
            __asm__ volatile(
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                : "+r"(x));
        }
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("%.6f %ld\n", 20.0 * iters / best / 1e9, x);
    return 0;
}
"""


def topology(cpus: list[int]) -> dict:
    """CPUs, cores and SMT siblings as the kernel reports them (lscpu and sysfs)."""
    sysfs = Path("/sys/devices/system/cpu")
    siblings = {}
    for c in cpus:
        p = sysfs / f"cpu{c}" / "topology" / "thread_siblings_list"
        siblings[c] = p.read_text().strip() if p.exists() else "?"
    lscpu = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in (
                "Model name",
                "Thread(s) per core",
                "Core(s) per socket",
                "Socket(s)",
                "Hypervisor vendor",
            ):
                lscpu[k.strip()] = v.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    smt = any("," in s or "-" in s for s in siblings.values())
    return {"cpus": cpus, "thread_siblings": siblings, "lscpu": lscpu, "smt_siblings_reported": smt}


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_dtypes(flags: set[str]) -> list[str]:
    return ["float32"] + (["bfloat16"] if {"avx512_bf16", "amx_bf16"} & flags else [])


def cpuinfo_mhz() -> list[float]:
    return [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines() if "cpu MHz" in line]


def measured_clock(cpus: list[int], iters: int = 20_000_000) -> dict:
    """GHz reached per CPU by a dependent-add chain, run on every CPU at once (the all-core clock) and on one."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(CLOCK_SRC)
        try:
            subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"skipped": f"no C compiler to time the clock: {exc!r}", "cpuinfo_mhz": cpuinfo_mhz()}

        def run(on: list[int]) -> list[float]:
            procs = [
                subprocess.Popen(["taskset", "-c", str(c), str(exe), str(iters)], stdout=subprocess.PIPE, text=True)
                for c in on
            ]
            return [float(p.communicate()[0].split()[0]) for p in procs]

        one = run(cpus[:1])
        every = run(cpus)
    return {
        "method": "20 dependent 64-bit adds per loop iteration (1 cycle latency each), best of 7 x "
        f"{iters * 20:.2g} adds, taskset to one CPU",
        "ghz_one_cpu": one[0],
        "ghz_all_cpus": every,
        "cpuinfo_mhz": cpuinfo_mhz(),
    }


def shapes(config: dict | None) -> list[tuple[str, int, int, int]]:
    """(name, M, K, N): square products and, given a model config, its layers' and LM head's products."""
    out = [(f"square {n}", n, n, n) for n in (1024, 2048, 3072)]
    if config:
        h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
        out += [
            ("mlp up (2048 tokens)", 2048, h, 2 * inter),
            ("mlp down (2048 tokens)", 2048, inter, h),
            ("lm head (512 rows)", 512, h, v),
        ]
    return out


def gemm_rate(dtype: str, m: int, k: int, n: int, reps: int, min_seconds: float = 0.3) -> float:
    """Best FLOP/s of ``reps`` timed repetitions (each repeated to at least ``min_seconds``) of an m x k @ k x n."""
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(m, k).to(dt), torch.randn(k, n).to(dt)
    c = torch.empty(m, n, dtype=dt)
    torch.matmul(a, b, out=c)
    t0 = time.perf_counter()
    torch.matmul(a, b, out=c)
    inner = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b, out=c)
        best = min(best, (time.perf_counter() - t0) / inner)
    return 2 * m * k * n / best


def measure(config: dict | None, reps: int, log=print) -> dict:
    """Every native dtype x shape x (1 thread, all threads); the peak per dtype is the best all-thread rate."""
    # before torch: with OMP_PROC_BIND set, OpenMP binds this (master) thread to the first CPU
    cpus = sorted(os.sched_getaffinity(0))
    import torch

    flags = cpu_flags()
    res: dict = {"topology": topology(cpus), "dtypes": native_dtypes(flags), "reps": reps, "gemm": []}
    res["clock_before"] = measured_clock(cpus)
    log(f"clock: {res['clock_before']}")
    for dtype in res["dtypes"]:
        for name, m, k, n in shapes(config):
            row = {"dtype": dtype, "shape": name, "m": m, "k": k, "n": n}
            for threads in sorted({1, len(cpus)}):
                torch.set_num_threads(threads)
                row[f"gflops_{threads}t"] = gemm_rate(dtype, m, k, n, reps) / 1e9
            row["mhz_during"] = cpuinfo_mhz()
            res["gemm"].append(row)
            log(f"{dtype:9s} {name:24s} " + " ".join(f"{k}={v:.1f}" for k, v in row.items() if k.startswith("gflops")))
    torch.set_num_threads(len(cpus))
    res["clock_after"] = measured_clock(cpus)
    key = f"gflops_{len(cpus)}t"
    res["peak"] = {}
    for dtype in res["dtypes"]:
        rows = [r for r in res["gemm"] if r["dtype"] == dtype]
        best = max(rows, key=lambda r: r[key])
        one = max(r["gflops_1t"] for r in rows)
        res["peak"][dtype] = {
            "gflops": best[key],
            "shape": best["shape"],
            "gflops_one_thread": one,
            "thread_scaling": best[key] / one if one else None,
        }
    return res


def markdown(res: dict, nominal: dict | None = None) -> list[str]:
    topo, clk = res["topology"], res["clock_before"]
    cpus = len(topo["cpus"])
    lines = [
        "| dtype | peak GFLOP/s (all CPUs) | at | best one-thread GFLOP/s | all / one thread |",
        "|---|---|---|---|---|",
    ]
    for dt, p in res["peak"].items():
        lines.append(
            f"| {dt} | **{p['gflops']:.0f}** | {p['shape']} | {p['gflops_one_thread']:.0f} | "
            f"{p['thread_scaling']:.2f} |"
        )
    lines += [
        "",
        "| dtype | shape (M x K x N) | GFLOP/s, 1 thread | GFLOP/s, all CPUs | cpu MHz (/proc/cpuinfo) during |",
        "|---|---|---|---|---|",
    ]
    for r in res["gemm"]:
        lines.append(
            f"| {r['dtype']} | {r['shape']} ({r['m']} x {r['k']} x {r['n']}) | {r['gflops_1t']:.1f} | "
            f"{r[f'gflops_{cpus}t']:.1f} | {', '.join(f'{x:.0f}' for x in r['mhz_during'])} |"
        )
    lines += [
        "",
        f"Topology: {cpus} CPUs {topo['cpus']}; kernel thread siblings {topo['thread_siblings']} "
        f"({'SMT siblings reported' if topo['smt_siblings_reported'] else 'no SMT siblings reported: separate cores'}); "
        f"lscpu {topo['lscpu']}. Measured: the all-CPU product rate is "
        + ", ".join(f"{p['thread_scaling']:.2f}x" for p in res["peak"].values())
        + " one thread's (about 2x for two cores with their own FMA units; near 1x would mean SMT siblings "
        "sharing one core's units).",
    ]
    if "skipped" in clk:
        lines += ["", f"Clock: not timed ({clk['skipped']}); /proc/cpuinfo says {clk['cpuinfo_mhz']} MHz."]
    else:
        after = res["clock_after"]
        lines += [
            "",
            f"Clock reached ({clk['method']}): {clk['ghz_one_cpu']:.2f} GHz on one CPU, "
            f"{', '.join(f'{x:.2f}' for x in clk['ghz_all_cpus'])} GHz on all at once before the products, "
            f"{', '.join(f'{x:.2f}' for x in after['ghz_all_cpus'])} after; /proc/cpuinfo 'cpu MHz' "
            f"{', '.join(f'{x:.0f}' for x in clk['cpuinfo_mhz'])} (a KVM guest reports the nominal TSC rate).",
        ]
    return lines
