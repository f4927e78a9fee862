"""What ``--dtype auto`` means: the fastest dtype this device computes natively that keeps the rewards' ranking.

vLLM's own ``auto`` turns a float32 checkpoint into float16 for a pooling model on every platform,
CPUs included, where float16 has no native matrix instructions on most parts: it is slower there
than both bfloat16 and float32 (docs/loadtests.md has the measurement). So the service resolves ``auto`` itself, before the engine starts, from what
the device reports:

- CPU: bfloat16 where the CPU has native bf16 matrix instructions (x86 ``amx_bf16`` or
  ``avx512_bf16``; Arm ``bf16``), else float32. Never float16 (emulated in software on CPUs).
- GPU: the checkpoint's dtype; a float32 checkpoint (such as a GGUF conversion) runs in bfloat16
  on GPUs that support it (compute capability >= 8.0; ROCm), else float32. A 16-bit checkpoint
  the GPU cannot run natively (bfloat16 before 8.0) runs in float32: float16 would narrow the
  range the weights were trained in.
- The transformers engine is the exact reference: float64.

An explicit ``--dtype`` always wins. The cost of bfloat16 in reward quality is measured in
``results/real/bf16/README.md``. ``resolve_dtype`` is a pure function of the facts it is given
(tested with flags given to it); ``machine_dtype`` gathers this machine's facts and calls it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

log = logging.getLogger(__name__)

DeviceKind = Literal["cpu", "cuda", "rocm", "other"]

# /proc/cpuinfo flag names (x86 "flags", Arm "Features") of native bf16 matrix / dot-product instructions.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
_FLOAT = {"float32", "float", "fp32"}
_CANONICAL = {
    "float": "float32",
    "fp32": "float32",
    "half": "float16",
    "fp16": "float16",
    "bf16": "bfloat16",
    "torch.float32": "float32",
    "torch.float16": "float16",
    "torch.bfloat16": "bfloat16",
}


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # float32 | bfloat16 | float16 | float64
    reason: str  # one line for the log
    requested: str = "auto"

    def __str__(self) -> str:
        return f"dtype {self.dtype} ({self.reason})"


def canonical(name: str | None) -> str | None:
    if name is None:
        return None
    name = str(name).strip().lower()
    return _CANONICAL.get(name, name)


def resolve_dtype(
    requested: str,
    *,
    device: DeviceKind,
    cpu_flags: Iterable[str] = (),
    checkpoint_dtype: str | None = None,
    gpu_bf16: bool | None = None,
    engine: str = "vllm",
) -> DtypeChoice:
    """The compute dtype for ``requested`` (``auto`` or a dtype name) on the device described."""
    requested = canonical(requested) or "auto"
    if requested != "auto":
        return DtypeChoice(requested, "--dtype given explicitly", requested)
    if engine == "transformers":
        return DtypeChoice("float64", "the transformers engine is the exact float64 reference")
    ckpt = canonical(checkpoint_dtype) or "float32"
    if device == "cpu":
        flags = {f.strip().lower() for f in cpu_flags}
        native = [f for f in CPU_BF16_FLAGS if f in flags]
        if native:
            return DtypeChoice("bfloat16", f"the CPU computes bf16 natively ({', '.join(native)})")
        return DtypeChoice(
            "float32",
            "the CPU has no native bf16 matrix instructions (no amx_bf16 / avx512_bf16 / "
            "bf16 flag); float16 would be emulated",
        )
    if device in ("cuda", "rocm"):
        bf16 = bool(gpu_bf16) if gpu_bf16 is not None else device == "rocm"
        if ckpt in _FLOAT or ckpt == "float64":
            if bf16:
                return DtypeChoice("bfloat16", f"{ckpt} checkpoint on a GPU with native bf16")
            return DtypeChoice("float32", f"{ckpt} checkpoint on a GPU without native bf16")
        if ckpt == "bfloat16" and not bf16:
            return DtypeChoice(
                "float32", "bfloat16 checkpoint on a GPU without native bf16 (float16 would narrow its range)"
            )
        return DtypeChoice(ckpt, "the checkpoint's dtype")
    return DtypeChoice("float32", f"no dtype rule for device {device!r}")


# --- this machine's facts ---------------------------------------------------------------


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The first processor's flags (x86 ``flags``, Arm ``Features``); empty where unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def checkpoint_dtype(model_path: str | Path) -> str | None:
    """``torch_dtype`` / ``dtype`` of the checkpoint's config.json (its text config for multimodal ones)."""
    config = Path(model_path) / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    for cfg in (data, data.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            if isinstance(cfg.get(key), str):
                return canonical(cfg[key])
    return None


def _device() -> tuple[DeviceKind, bool | None]:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "cpu", None
    if current_platform.is_rocm():
        return "rocm", True
    if current_platform.is_cuda():
        return "cuda", bool(current_platform.has_device_capability(80))
    return "other", None


def engine_dtype(settings_dtype: str, model_path: str | Path, engine: str) -> DtypeChoice:
    """What an engine computes in: the transformers engine on CPU (auto: float64), vLLM on this device."""
    if engine == "transformers":
        return resolve_dtype(settings_dtype, device="cpu", engine="transformers")
    return machine_dtype(settings_dtype, model_path, "vllm")


def resolve_head_dtype(requested: str, compute_dtype: str, device: DeviceKind) -> str:
    """The LM head's dtype, ``float32`` or ``model`` (the compute dtype), for ``requested`` (``auto`` or either).

    vLLM gives pooling models a float32 head. On a GPU that is cheap (the product accumulates straight into
    float32); on a CPU with a 16-bit compute dtype it casts the whole head weight to float32 and runs a float32
    GEMM every step, which for SmolLM2 in bfloat16 took 44% of the worker's time and left the plugin at 0.7x of
    vLLM's own bf16 prompt_logprobs route. There ``auto`` is ``model``: logits rounded to bfloat16 added 8% to the
    bfloat16 body's per-token error against float64 and changed no ranking (scripts/dtype_error.py,
    results/real/bf16/). An explicit value always wins; with a float32 body both are the same.
    """
    if requested != "auto":
        return requested
    if device == "cpu" and compute_dtype in ("bfloat16", "float16"):
        return "model"
    return "float32"


def machine_head_dtype(requested: str, compute_dtype: str, engine: str = "vllm") -> str:
    """``resolve_head_dtype`` on this machine's device (the transformers engine has no such choice: float32)."""
    if engine != "vllm":
        return "float32"
    if requested != "auto" or compute_dtype in ("float32", "float64"):  # the device decides nothing here:
        return resolve_head_dtype(requested, compute_dtype, "cpu")  # no need to ask vLLM's platform
    return resolve_head_dtype(requested, compute_dtype, _device()[0])


def machine_dtype(requested: str, model_path: str | Path, engine: str = "vllm") -> DtypeChoice:
    """``resolve_dtype`` with this machine's device, CPU flags and the checkpoint's dtype."""
    if canonical(requested) not in (None, "auto") or engine == "transformers":
        return resolve_dtype(requested, device="cpu", engine=engine)
    device, gpu_bf16 = _device()
    return resolve_dtype(
        requested,
        device=device,
        cpu_flags=cpu_flags() if device == "cpu" else (),
        checkpoint_dtype=checkpoint_dtype(model_path),
        gpu_bf16=gpu_bf16,
        engine=engine,
    )
