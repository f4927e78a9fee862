"""py-spy profiles of the server's processes under saturating HTTP load (``--py-spy``).

The server is three processes: the API process (FastAPI, tokenization, reward math,
vLLM's AsyncLLM client), vLLM's engine core (scheduler) and the worker (model
forward and the plugin's pooler). Each is sampled with ``py-spy record --format raw``
(collapsed stacks, one ``frame;frame;... count`` per line, flamegraph.pl input) and
summarised as the share of samples in which a function is on the stack.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

RATE_HZ = 50
# What the worker's time goes to: model body vs the plugin's pooler (LM head + logsumexp).
WORKER_PARTS = {
    "pooler (LM head + logsumexp, chunked_token_stats)": "chunked_token_stats",
    "logsumexp / gather outside the matmul (shard_stats)": "shard_stats",
    "model body (transformer layers)": "_model_forward",
    "oneDNN matmuls (all)": "onednn_mm",
}
_FRAME = re.compile(r"(?P<fn>\S+) \((?P<file>[^:)]*)")


def executable() -> str | None:
    """py-spy on PATH, or beside this Python (a venv's bin/ that is not on PATH)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def available() -> bool:
    return executable() is not None


def server_processes(pid: int) -> dict[str, int]:
    """{'api': pid, 'core': pid, 'worker': pid} of an ``endorm serve`` process tree."""
    import psutil

    out = {"api": pid}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            label = child.name() + " " + " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "EngineCore" in label:
            out.setdefault("core", child.pid)
        elif "Worker" in label:
            out.setdefault("worker", child.pid)
    return out


def start(pids: dict[str, int], seconds: float, out_dir: Path, stem: str) -> dict[str, tuple[subprocess.Popen, Path]]:
    procs = {}
    for name, pid in pids.items():
        path = out_dir / f"{stem}-pyspy-{name}.txt"
        cmd = [
            executable() or "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(RATE_HZ),
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(path),
        ]
        procs[name] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT), path)
    return procs


def inclusive_shares(raw: str) -> tuple[int, collections.Counter, collections.Counter]:
    """(total samples, {function [file]: samples with it on the stack}, {function [file]: samples at the top})."""
    total, inc, leaf = 0, collections.Counter(), collections.Counter()
    for line in raw.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        names = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            names.append(f"{m['fn']} [{Path(m['file']).name}]" if m else frame)
        for name in set(names):
            inc[name] += count
        leaf[names[-1]] += count
    return total, inc, leaf


def summarize(paths: dict[str, Path], seconds: float, top: int = 12) -> dict:
    out = {}
    for name, path in paths.items():
        try:
            total, inc, leaf = inclusive_shares(path.read_text())
        except OSError:
            continue
        entry = {
            "samples": total,
            "active_share": total / max(1.0, seconds * RATE_HZ),
            "top": [(f, n / total) for f, n in inc.most_common(top)] if total else [],
            "leaves": [(f, n / total) for f, n in leaf.most_common(top)] if total else [],
        }
        if name == "worker" and total:
            entry["parts"] = {
                label: sum(n for f, n in inc.items() if f.split(" [")[0].endswith(key)) / total
                for label, key in WORKER_PARTS.items()
            }
        out[name] = entry
    return out
