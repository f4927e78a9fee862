"""What every engine gives the service: per-token (c_i, v_i) for token sequences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from endorm_server.engine.dtype import DtypeChoice


@dataclass(frozen=True)
class SequenceStats:
    """c[i] = raw logit at position offset+i of x_{offset+i+1} (NaN at N-1); v[i] = alpha*logsumexp(logits/alpha) there.

    ``offset`` > 0 when only positions offset .. N-1 were asked for (scoring reads from P - 1)
    or, with the prefix cache read, when a cache hit covered the positions before it.
    ``extra_c[j]`` = logits_p[token] for the j-th requested extra (p, token) pair (NaN if p was not computed).
    """

    c: np.ndarray
    v: np.ndarray
    offset: int = 0
    extra_c: np.ndarray | None = None
    cached_tokens: int = 0  # prompt tokens vLLM served from its prefix cache


@dataclass(frozen=True)
class EngineInfo:
    name: str  # "vllm" | "transformers"
    model: str
    max_model_len: int
    alpha: float
    vocab_size: int
    dtype: str = "float32"  # the resolved compute dtype (service/endorm_server/engine/dtype.py)


def check_token_ids(token_ids: Sequence[int], vocab_size: int) -> None:
    """Ids outside the embedding table crash the engine's workers (no check in vLLM on CPU)."""
    if len(token_ids) < 2:
        raise ValueError("a sequence needs at least 2 tokens (one prompt token and one response token)")
    ids = np.asarray(token_ids)
    if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids must be integers in the vocabulary [0, {vocab_size})")


class EngineError(RuntimeError):
    """The engine cannot serve (dead, shutting down); the HTTP layer maps it to 503."""


class TokenStatsEngine(Protocol):
    info: EngineInfo | None  # set by start()
    dtype_choice: DtypeChoice  # the resolved compute dtype and why, known before start()

    async def start(self) -> None:
        """Load the model and warm up; returns when requests are fast."""

    async def token_stats(self, token_ids: Sequence[int]) -> SequenceStats:
        """Stats for one sequence. Cancelling the caller aborts the engine work."""
        ...

    def num_unfinished(self) -> int:
        """Sequences submitted and not finished (for metrics and tests)."""

    @property
    def healthy(self) -> bool: ...

    async def shutdown(self) -> None: ...


class PrefixReuseEngine(TokenStatsEngine, Protocol):
    """An engine with ``supports_prefix_reuse``: positions from ``first`` on, reading the prefix cache, and
    the logits of extra (position, token) pairs (scoring/grouping.py's group-aware path)."""

    async def token_stats(
        self,
        token_ids: Sequence[int],
        *,
        first: int = 0,
        read_cache: bool = False,  # type: ignore[override]
        extra_targets: Sequence[tuple[int, int]] = (),
    ) -> SequenceStats: ...
