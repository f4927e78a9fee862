"""The LM head and logsumexp on fixed tiles of rows, for ``--batch-invariant``.

Without the mode the pooler hands the LM head a step's rows in chunks whose last one is as long
as what is left, so a row's logits come from a call with as many rows as the step happened to
need (its neighbours' rows, the extra targets of group-aware scoring). Here every call has
exactly ``tile`` rows (the last tile padded with zero rows, whose results are dropped): each
row's logits and logsumexp come from the same kernel on the same shape whatever else was
scored, and a row's result does not depend on the values of the other rows in its tile.
"""

from __future__ import annotations

import torch

from endorm_server.engine.vllm_plugin.chunked_stats import LogitsFn, chunked_token_stats

BATCH_INVARIANT_KEY = "endorm_batch_invariant"  # hf_config attribute set through hf_overrides


def fixed_tile_stats(
    hidden_states: torch.Tensor, targets: torch.Tensor, logits_fn: LogitsFn, *, alpha: float, tile: int
) -> torch.Tensor:
    """[T, 2] float32 (c_i, v_i) like ``chunked_token_stats``, every LM-head call on ``tile`` rows."""
    n = hidden_states.shape[0]
    padded = -(-n // tile) * tile
    if padded != n:
        pad = padded - n
        hidden_states = torch.cat([hidden_states, hidden_states.new_zeros(pad, hidden_states.shape[1])])
        targets = torch.cat([targets, targets.new_zeros(pad)])
    return chunked_token_stats(hidden_states, targets, logits_fn, alpha=alpha, chunk_rows=tile)[:n]
