"""Exact reference (and CPU fallback) engine: a plain transformers forward.

Full logits in float64 (or the requested dtype), then c_i and v_i by their
definitions. Slow and memory-hungry by design: it is what the vLLM plugin is
checked against, and what runs where vLLM cannot.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Sequence

import torch

from endorm_server.config import Settings
from endorm_server.engine.base import EngineError, EngineInfo, SequenceStats, check_token_ids
from endorm_server.engine.dtype import engine_dtype

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def reference_token_stats(logits: torch.Tensor, token_ids: Sequence[int], alpha: float) -> SequenceStats:
    """c_i = logits_i[x_{i+1}], v_i = alpha * logsumexp(logits_i / alpha), from full [N, V] logits."""
    logits = logits.double()
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    c = torch.full((len(ids),), float("nan"), dtype=torch.float64)
    c[:-1] = logits[:-1].gather(-1, ids[1:, None])[:, 0]
    v = alpha * torch.logsumexp(logits / alpha, dim=-1)
    return SequenceStats(c=c.numpy(), v=v.numpy())


class TransformersEngine:
    def __init__(self, settings: Settings, model_path: str) -> None:
        self.settings = settings
        self.model_path = model_path
        self._model: Any = None
        self._lock = threading.Lock()
        self._unfinished = 0
        self.info: EngineInfo | None = None
        self.dtype_choice = engine_dtype(settings.dtype, model_path, "transformers")  # auto: float64

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM

        dtype = _DTYPES[self.dtype_choice.dtype]
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=dtype, trust_remote_code=self.settings.trust_remote_code
        )
        model.eval()
        self._model = model
        config = model.config
        max_len = self.settings.max_model_len or int(getattr(config, "max_position_embeddings", 2048))
        self.info = EngineInfo(
            name="transformers",
            model=self.model_path,
            max_model_len=max_len,
            alpha=self.settings.alpha,
            vocab_size=int(config.vocab_size),
            dtype=self.dtype_choice.dtype,
        )

    def forward_stats(self, token_ids: Sequence[int]) -> SequenceStats:
        # The model is read under the lock that shutdown takes: checked outside it, a shutdown between
        # the check and the call left None to call (a 500 instead of the engine-down 503).
        with self._lock:
            model = self._model
            if model is None or self.info is None:
                raise EngineError("engine is not running")
            check_token_ids(token_ids, self.info.vocab_size)
            with torch.inference_mode():
                logits = model(torch.as_tensor([list(token_ids)])).logits[0]
        return reference_token_stats(logits, token_ids, self.settings.alpha)

    async def token_stats(self, token_ids: Sequence[int]) -> SequenceStats:
        self._unfinished += 1
        try:
            return await asyncio.to_thread(self.forward_stats, token_ids)
        finally:
            self._unfinished -= 1

    def num_unfinished(self) -> int:
        return self._unfinished

    @property
    def healthy(self) -> bool:
        return self._model is not None

    async def shutdown(self) -> None:
        await asyncio.to_thread(self._release)  # waits for a forward in flight; the loop keeps running

    def _release(self) -> None:
        with self._lock:
            self._model = None
