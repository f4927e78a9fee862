"""``system_fingerprint``: which reward a response came from (weights, config, tokenizer, template, alpha).

A trainer logs it beside every reward and can pin it: two servers give the same value
exactly when they load byte-identical weights, config, tokenizer and chat template and
run with the same alpha, the same resolved compute dtype and the same engine (the reward
r = Q - V depends on all of them). Named like
OpenAI's ``system_fingerprint``, and shaped like it: ``fp_`` + 16 hex digits.

It hashes files, not tensors, so it is cheap; the SHA-256 of a big weights file is
cached (service/endorm_server/models/hashing.py), so a restart does not read the weights again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
) -> str:
    """``fp_`` + 16 hex digits of SHA-256 over the model's reward-relevant files, alpha, the resolved compute
    dtype and the engine (bfloat16 and float32 give different rewards from the same weights, and so do vLLM's
    kernels and the float64 transformers reference), and the LM head's dtype where it is not float32 (logits
    rounded to a 16-bit dtype). ``dtype`` is what the engine computes in, never ``auto``:
    ``auto`` resolves per machine (service/endorm_server/engine/dtype.py), so hashing the word would give one
    value to different rewards and two values to the same one."""
    if dtype == "auto":
        raise ValueError("model_fingerprint needs the resolved dtype, not 'auto'")
    path = Path(model_path)
    files: dict[str, str] = {}
    if path.is_dir():
        for pattern in FINGERPRINT_PATTERNS:
            for f in sorted(path.glob(pattern)):
                if f.is_file():
                    files[f.name] = cached_file_sha256(f, cache_dir)
    else:  # a hub id the engine resolves itself: only its name is known here
        files["hub-id"] = str(model_path)
    identity = {"files": files, "alpha": float(alpha).hex(), "dtype": str(dtype), "engine": str(engine)}
    if head_dtype != "float32" and dtype != "float32":  # logits in the compute dtype: other rewards
        identity["head_dtype"] = "model"
    if batch_invariant:  # other kernels and shapes, so other bits (servers without it keep their value)
        identity["batch_invariant"] = "on"
    payload = json.dumps(identity, sort_keys=True)
    return "fp_" + hashlib.sha256(payload.encode()).hexdigest()[:16]
