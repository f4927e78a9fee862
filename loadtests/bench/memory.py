"""Peak memory vs sequence length: the plugin engine vs the naive transformers path.

Run as a subprocess per path (``python -m loadtests.bench.memory plugin|naive ...``) so
each starts clean. For each length (ascending) one sequence is scored, and the
extra memory is the rise of the peak resident set over the resident set just
before it, summed over the process and its children (vLLM's engine core and
worker). The kernel's peak counter (VmHWM) is reset before each length by writing
5 to /proc/PID/clear_refs, and glibc is told to hand freed blocks of 1 MiB and more
straight back to the kernel (MALLOC_MMAP_THRESHOLD_), so the peak measures what a
request really allocates rather than what the allocator kept from earlier ones.

This measures host memory, which is where both paths keep their tensors on a CPU
machine; on a GPU machine the logits live in device memory, which this does not read.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import sys
import time

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        proc = psutil.Process(pid)
        return [pid] + [c.pid for c in proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _reset_peaks(pids: list[int]) -> dict[int, int]:
    before = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        before[pid] = _status(pid).get("VmRSS", 0)
    return before


def _peaks(before: dict[int, int]) -> tuple[int, int]:
    extra = peak = 0
    for pid, rss in before.items():
        hwm = _status(pid).get("VmHWM", rss)
        extra += max(0, hwm - rss)
        peak += hwm
    return extra, peak


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def seq_of(n: int, vocab: int) -> list[int]:
    return [16 + (i * 7919) % (vocab - 16) for i in range(n)]


def measure_naive(model_path: str, lengths: list[int]) -> list[dict]:
    from loadtests.bench.throughput import load_naive_model, naive_token_stats

    model = load_naive_model(model_path)
    vocab = model.config.vocab_size
    naive_token_stats(model, seq_of(64, vocab))  # warm-up
    rows = []
    for n in lengths:
        _trim()
        before = _reset_peaks([os.getpid()])
        t0 = time.perf_counter()
        naive_token_stats(model, seq_of(n, vocab))
        dt = time.perf_counter() - t0
        extra, peak = _peaks(before)
        rows.append({"tokens": n, "extra_bytes": extra, "peak_bytes": peak, "seconds": dt})
        print(
            f"naive  {n:6d} tokens: extra {extra / 2**20:8.1f} MiB, peak {peak / 2**20:8.1f} MiB",
            file=sys.stderr,
            flush=True,
        )
    return rows


def measure_plugin(model_path: str, lengths: list[int], settings_json: str) -> list[dict]:
    from endorm_server.config import Settings
    from endorm_server.engine.vllm_engine import VllmEngine

    settings = Settings(**json.loads(settings_json))

    async def go():
        engine = VllmEngine(settings, model_path)
        await engine.start()  # warm-up included: a max_num_batched_tokens-long sequence has run
        vocab = engine.info.vocab_size
        rows = []
        try:
            for n in lengths:
                _trim()
                pids = _tree(os.getpid())
                before = _reset_peaks(pids)
                t0 = time.perf_counter()
                stats = await engine.token_stats(seq_of(n, vocab))
                dt = time.perf_counter() - t0
                assert len(stats.v) == n
                extra, peak = _peaks(before)
                rows.append(
                    {"tokens": n, "extra_bytes": extra, "peak_bytes": peak, "seconds": dt, "processes": len(pids)}
                )
                print(
                    f"plugin {n:6d} tokens: extra {extra / 2**20:8.1f} MiB, peak {peak / 2**20:8.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            await engine.shutdown()
        return rows

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.memory")
    p.add_argument("path", choices=["plugin", "naive"])
    p.add_argument("--model", required=True)
    p.add_argument("--lengths", default="512,1024,2048,4096,8192")
    p.add_argument("--settings-json", default="{}", help="Settings for the plugin engine")
    p.add_argument("--out", required=True, help="JSON file for the rows")
    a = p.parse_args(argv)
    lengths = sorted(int(x) for x in a.lengths.split(","))
    rows = measure_naive(a.model, lengths) if a.path == "naive" else measure_plugin(a.model, lengths, a.settings_json)
    with open(a.out, "w") as f:
        json.dump({"path": a.path, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
