"""Per-token statistics [c_i, v_i] from hidden states, in bounded memory.

For a sequence x_0 .. x_{N-1} and logits_i = Q(s_i, .) (the LM's raw logits at
position i):

    c_i = logits_i[x_{i+1}]                       raw logit of the next token
    v_i = alpha * logsumexp(logits_i / alpha)     soft value V(s_i)

Logits are produced ``chunk_rows`` rows at a time, so the extra memory is
``chunk_rows x vocab x 4`` bytes whatever the number of tokens. With tensor
parallelism each rank holds a vocabulary shard; the logsumexp and the chosen
logit are then reduced across ranks (max, then sum of rescaled partial sums),
so the full-vocabulary logits never exist in one place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

# 64 rows x a 49k vocabulary of float32 logits is 12.6 MB, which stays in cache between the LM head's
# product and the logsumexp that reads it back; 256 rows (50 MB) did not, and cost a third more time in
# the head (python -m loadtests.bench.step_profile --logits-chunk-rows 32,64,256, docs/loadtests.md).
DEFAULT_CHUNK_ROWS = 64


def chunked_token_stats(
    hidden_states: torch.Tensor,
    targets: torch.Tensor,
    logits_fn: LogitsFn,
    *,
    alpha: float = 1.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    vocab_start: int = 0,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Return [T, 2] float32: column 0 = c_i, column 1 = v_i.

    ``targets[i]`` is the global id of x_{i+1} (any value where there is no next
    token; the caller masks those rows). ``logits_fn`` maps hidden rows to the
    logits of this rank's vocabulary shard ``[vocab_start, vocab_start + V_local)``;
    with ``group`` set the partial results are all-reduced over it.
    """
    out = torch.empty(hidden_states.shape[0], 2, dtype=torch.float32, device=hidden_states.device)
    for a in range(0, hidden_states.shape[0], chunk_rows):
        b = min(a + chunk_rows, hidden_states.shape[0])
        logits = logits_fn(hidden_states[a:b]).float()
        c, v = shard_stats(logits, targets[a:b], alpha=alpha, vocab_start=vocab_start, group=group)
        out[a:b, 0] = c
        out[a:b, 1] = v
        del logits
    return out


def shard_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float,
    vocab_start: int = 0,
    group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, v) for rows of logits over one vocabulary shard, reduced over ``group``.

    Without a group the shard is the whole vocabulary. With a group:
        m   = max_ranks max_a Q(s, a) / alpha
        S   = sum_ranks sum_a exp(Q(s, a) / alpha - m)
        v   = alpha * (m + log S)
        c   = sum_ranks [target in shard] * Q(s, target)
    """
    scaled = logits / alpha if alpha != 1.0 else logits
    local = targets - vocab_start
    in_shard = (local >= 0) & (local < logits.shape[-1])
    c = logits.gather(-1, local.clamp(0, logits.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    if group is None:
        return c, alpha * torch.logsumexp(scaled, dim=-1)
    c = torch.where(in_shard, c, torch.zeros_like(c))
    m = scaled.max(dim=-1).values
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    s = torch.exp(scaled - m.unsqueeze(-1)).sum(dim=-1)
    dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
    dist.all_reduce(c, op=dist.ReduceOp.SUM, group=group)
    return c, alpha * (m + torch.log(s))
