"""``--batch-invariant``: an item's rewards are a pure function of (model, settings, item).

Where the bits move without it (CPU; docs/exactness.md has the measurements): vLLM's CPU attention
kernel splits each step's queries into work items by balancing the whole step's key lengths over the
OpenMP threads, and the size of a query tile sets the size of its key tiles, i.e. the order of the
online softmax; so a query row's attention depends on which other requests share its step, where
chunked prefill cut its request and how much of it came from the prefix cache. The model body's CPU
GEMMs switch kernels below 16 rows; the LM head sees as many rows as the step needed.

``plan`` picks how the mode is made on this engine:

- ``kernels`` (CPU, where vLLM's attention ISA is one whose tiling the fixed split was checked on):
  batching, chunked prefill and the prefix cache stay. Attention is fed fixed pieces (every request's
  queries cut at absolute positions that are multiples of the kernel's query tile, KV split off), so a
  query's piece, its key tiling and its work item depend on its position only; every linear layer's
  GEMM gets at least 16 rows; the LM head and the logsumexp run on tiles of a fixed number of rows
  (vllm_plugin/batch_invariant.py).
- ``configuration`` (CPU, any other attention ISA, or ``ENDORM_BATCH_INVARIANT_CPU=configuration``):
  invariant by construction, one sequence per engine step, never split (no chunked prefill: the step
  budget covers the longest sequence) and never read from the prefix cache, so every scoring of an item
  runs the same kernels on the same shapes; the LM head on fixed tiles as above.
- ``vllm`` (GPU): vLLM's own batch-invariant mode (``VLLM_BATCH_INVARIANT=1``: its fixed-order matmul,
  softmax and norm kernels), set before the engine reads its environment; not verified here.

``receipt`` turns the plan into what ``GET /v1/models`` reports: whether the mode is on and what the
bits rest on (threads, GEMM path, attention path, LM head, scheduling).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

GPU_ENV = "VLLM_BATCH_INVARIANT"  # vLLM's own switch (vllm/envs.py), read when the engine builds its config
HEAD_TILE_ROWS = 64  # rows of every LM-head call in the mode (a multiple of any kernel's row block)


@dataclass(frozen=True)
class Receipt:
    """What ``GET /v1/models`` reports: whether the mode is on and what its invariance rests on."""

    batch_invariant: bool
    threads: str  # the engine's OpenMP threads (the GEMM and attention partitions depend on them)
    gemm: str  # the model body's matrix products
    attention: str
    lm_head: str
    scheduling: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CPU_PATH_ENV = "ENDORM_BATCH_INVARIANT_CPU"  # kernels (default where covered) | configuration: for comparisons
CPU_BLOCK_SIZE = 128  # vLLM's KV-cache block on CPU (platforms/cpu.py), which picks the attention ISA


@dataclass(frozen=True)
class Plan:
    """How the mode is made on this engine: ``off``, ``kernels`` (CPU, batching kept), ``configuration`` (CPU,
    one sequence per step) or ``vllm`` (GPU: vLLM's own mode)."""

    path: str
    attention_tile: int = 0  # kernels: queries per fixed attention piece
    attention_isa: str | None = None
    engine_overrides: dict[str, Any] | None = None


def resolve(setting: bool | str, *, on_cpu: bool, dtype: str, config: Any) -> bool:
    """Whether the mode is on: as asked, or for ``auto`` (the default) where the ``kernels`` path applies, which
    measured no throughput cost (docs/loadtests.md). ``auto`` stays off on a GPU (vLLM's mode is beta and not
    verified here) and where only the one-sequence-per-step configuration would make it (e.g. AMX attention)."""
    if isinstance(setting, bool):
        return setting
    return on_cpu and os.environ.get(CPU_PATH_ENV, "kernels") == "kernels" and _attention(dtype, config)[1] is not None


def resolve_settings(settings: Any, model_path: str, dtype: str) -> bool:
    """``resolve`` for a server's Settings without an engine (the fingerprint is known before one starts)."""
    if settings.engine != "vllm":
        return False
    if isinstance(settings.batch_invariant, bool):
        return settings.batch_invariant
    from endorm_server.engine.vllm_engine import _on_cpu, hf_config  # the engine's own config and device checks

    config = hf_config(model_path, settings.trust_remote_code)
    return resolve(settings.batch_invariant, on_cpu=_on_cpu(), dtype=dtype, config=config)


def _attention(dtype: str, config: Any) -> tuple[str, int | None]:
    """(vLLM's CPU attention ISA for this model and dtype, the fixed query tile; None where not covered)."""
    import torch
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from endorm_server.engine.vllm_plugin.batch_invariant import query_tile

    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_size = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    isa = _get_attn_isa(getattr(torch, dtype), CPU_BLOCK_SIZE, head_size)
    return isa, query_tile(isa, heads, kv_heads)


def plan(on: bool, on_cpu: bool, dtype: str, config: Any, max_model_len: int, max_num_batched_tokens: int) -> Plan:
    """The path for this model and machine. ``kernels`` where vLLM's CPU attention ISA is one whose tiling
    the fixed split was checked on (vllm_plugin/batch_invariant.py), else the configuration."""
    if not on_cpu:
        return Plan("vllm" if on else "off")
    isa, tile = _attention(dtype, config)
    if not on:  # the receipt still names the attention ISA the bits rest on
        return Plan("off", attention_isa=isa)
    choice = os.environ.get(CPU_PATH_ENV, "kernels")
    if choice not in ("kernels", "configuration"):
        raise ValueError(f"{CPU_PATH_ENV} must be kernels or configuration, got {choice!r}")
    if tile is not None and choice == "kernels":
        return Plan("kernels", attention_tile=tile, attention_isa=isa, engine_overrides={})
    overrides = {
        "max_num_seqs": 1,
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": max(max_num_batched_tokens, max_model_len),
        "enable_prefix_caching": False,
    }
    return Plan("configuration", attention_isa=isa, engine_overrides=overrides)


def apply_gpu_environment(on: bool, on_cpu: bool) -> None:
    """Turn on vLLM's own mode before the engine reads its environment (GPU only; a user's value wins)."""
    if on and not on_cpu:
        os.environ.setdefault(GPU_ENV, "1")


def thread_description(env: dict[str, str] | os._Environ[str]) -> str:
    """The worker's OpenMP threads as the binding says (service/endorm_server/engine/cpu_threads.py)."""
    from endorm_server.engine.cpu_threads import BIND_ENV, RESERVED_ENV

    bind = env.get(BIND_ENV)
    if bind and bind not in ("auto", "nobind"):
        return f"{_count_cpus(bind)} ({BIND_ENV}={bind})"
    return f"vLLM's automatic binding ({BIND_ENV}={bind or 'auto'}, {RESERVED_ENV}={env.get(RESERVED_ENV, 'default')})"


def _count_cpus(bind: str) -> int:
    total = 0
    for rank in bind.split("|"):
        for part in rank.split(","):
            lo, _, hi = part.partition("-")
            total += int(hi) - int(lo) + 1 if hi else 1
    return total


def receipt(plan: Plan, *, gemm: str | None, head_dtype: str) -> Receipt:
    if plan.path in ("off", "vllm") and gemm is None:  # a GPU
        on = plan.path == "vllm"
        return Receipt(
            batch_invariant=on,
            threads="n/a (GPU)",
            gemm="vLLM batch-invariant matmul (VLLM_BATCH_INVARIANT=1)" if on else "vLLM default",
            attention="vLLM's backend under VLLM_BATCH_INVARIANT=1" if on else "vLLM default",
            lm_head=f"vLLM compute_logits, {head_dtype}",
            scheduling="continuous batching, chunked prefill, prefix cache",
        )
    from endorm_server.engine.vllm_plugin.batch_invariant import MIN_GEMM_ROWS

    gemm_name = {"onednn": "oneDNN (vLLM onednn_mm)", "torch": "torch F.linear"}.get(gemm or "", str(gemm))
    isa = plan.attention_isa or "unknown"
    threads = thread_description(os.environ)
    head = f"{HEAD_TILE_ROWS}-row tiles, logsumexp per tile, {head_dtype}"
    if plan.path == "kernels":
        return Receipt(
            batch_invariant=True,
            threads=threads,
            gemm=f"{gemm_name}, at least {MIN_GEMM_ROWS} rows per call",
            attention=f"vLLM CPU attention ({isa}), queries in fixed {plan.attention_tile}-position pieces, "
            "no KV split",
            lm_head=head,
            scheduling="continuous batching, chunked prefill, prefix cache",
        )
    if plan.path == "configuration":
        return Receipt(
            batch_invariant=True,
            threads=threads,
            gemm=f"{gemm_name}, one call per layer on the item's own rows",
            attention=f"vLLM CPU attention ({isa}), one request per call",
            lm_head=head,
            scheduling="one sequence per engine step, no chunked prefill, prefix cache off",
        )
    return Receipt(
        batch_invariant=False,
        threads=threads,
        gemm=f"{gemm_name}, rows of every request in the step",
        attention=f"vLLM CPU attention ({isa}), work split over the step's requests",
        lm_head=f"chunks of --logits-chunk-rows rows of the step, {head_dtype}",
        scheduling="continuous batching, chunked prefill, prefix cache",
    )
