"""The LM head and logsumexp on fixed tiles of rows, for ``--batch-invariant``.

Without the mode the pooler hands the LM head a step's rows in chunks whose last one is as long
as what is left, so a row's logits come from a call with as many rows as the step happened to
need (its neighbours' rows, the extra targets of group-aware scoring). Here every call has
exactly ``tile`` rows (the last tile padded with zero rows, whose results are dropped): each
row's logits and logsumexp come from the same kernel on the same shape whatever else was
scored, and a row's result does not depend on the values of the other rows in its tile.
"""

from __future__ import annotations

from typing import Any

import torch

from endorm_server.engine.vllm_plugin.chunked_stats import LogitsFn, chunked_token_stats

BATCH_INVARIANT_KEY = "endorm_batch_invariant"  # hf_config attributes set through hf_overrides: LM-head tile rows
ATTENTION_TILE_KEY = "endorm_attention_tile"  # queries per fixed attention piece (0: vLLM's own split)


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


# --------------------------------------------------------------------------------------- attention

# Query heads vLLM's CPU attention kernel holds per inner iteration (attn_impl::MaxQHeadNumPerIteration
# in vLLM's csrc/cpu/cpu_attn_*.hpp), for the ISAs whose tiling the fixed split below was checked on.
MAX_Q_HEADS_PER_ITER = {"vec": 8, "vec16": 16}


def query_tile(isa: str, num_heads: int, num_kv_heads: int) -> int | None:
    """Tokens per attention call such that the kernel sees one full-size query tile; None: ISA not covered.

    The kernel rounds a query tile up to MAX_Q_HEADS_PER_ITER heads and sizes its key tiles from that,
    so a piece of at most this many tokens always gets the same key tiling (and is never split)."""
    max_heads = MAX_Q_HEADS_PER_ITER.get(isa)
    if max_heads is None:
        return None
    per_kv = num_heads // num_kv_heads
    return max_heads // per_kv if max_heads % per_kv == 0 else max_heads  # GQA packing, else one head at a time


def fixed_pieces(
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, tile: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut every request's scheduled queries at absolute positions that are multiples of ``tile``.

    Returns (query_start_loc, seq_lens, request index) of the pieces, each a causal pseudo-request of at
    most ``tile`` queries whose keys are its request's positions 0 .. last query: which piece a query lands
    in, and what that piece covers, depends on its position only, never on the step."""
    qsl = query_start_loc.long()
    counts = qsl[1:] - qsl[:-1]
    n_tokens = int(qsl[-1])
    req = torch.repeat_interleave(torch.arange(len(counts)), counts)
    token = torch.arange(n_tokens)
    pos = token - qsl[:-1][req] + (seq_lens.long() - counts)[req]
    starts = (token == qsl[:-1][req]) | (pos % tile == 0)
    begin = torch.nonzero(starts).flatten()
    end = torch.cat([begin[1:], torch.tensor([n_tokens])])
    piece_qsl = torch.cat([begin, torch.tensor([n_tokens])]).to(query_start_loc.dtype)
    piece_seq_lens = (pos[end - 1] + 1).to(seq_lens.dtype)
    return piece_qsl, piece_seq_lens, req[begin]


_ATTENTION_TILE: dict[str, int] = {}  # "tile" -> tokens per piece, once installed


def install_fixed_attention(tile: int) -> None:
    """Build every CPU attention step from fixed pieces (fixed_pieces), with vLLM's KV split off."""
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionMetadataBuilder

    _ATTENTION_TILE["tile"] = tile
    if getattr(CPUAttentionMetadataBuilder, "_endorm_fixed", False):
        return
    original = CPUAttentionMetadataBuilder.build

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        meta = original(self, common_prefix_len, common_attn_metadata, fast_build)
        if not meta.causal or meta.dynamic_causal is not None or self.is_encoder_only_attention:
            return meta
        qsl, seq_lens, req = fixed_pieces(meta.query_start_loc, meta.seq_lens, _ATTENTION_TILE["tile"])
        meta.query_start_loc, meta.seq_lens, meta.block_table = qsl, seq_lens, meta.block_table[req]
        meta.max_query_len = int((qsl[1:] - qsl[:-1]).max()) if len(req) else 0
        meta.scheduler_metadata = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(req),
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            seq_lens=seq_lens,
            dtype=self.dtype,
            query_start_loc=qsl,
            causal=True,
            sliding_window_size=self.window_size,
            isa=self.isa,
            enable_kv_split=False,
            dynamic_causal=None,
            kv_cache_dtype=self.kv_cache_dtype,
        )
        return meta

    CPUAttentionMetadataBuilder.build = build  # type: ignore[method-assign]
    CPUAttentionMetadataBuilder._endorm_fixed = True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------- matrix products

MIN_GEMM_ROWS = 16  # oneDNN and torch's CPU GEMMs switch kernels below this many rows (docs/exactness.md)
_LINEARS: list[Any] = []  # the original cpu_linear of each wrapped layer, by index


@torch.library.custom_op("endorm::min_rows_linear", mutates_args=())
def min_rows_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: int, out_features: int
) -> torch.Tensor:
    """The layer's own CPU GEMM on at least MIN_GEMM_ROWS rows (zero rows appended, their results dropped)."""
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if n < MIN_GEMM_ROWS:
        rows = torch.cat([rows, rows.new_zeros(MIN_GEMM_ROWS - n, rows.shape[1])])
    out = _LINEARS[layer](rows, weight, bias)[:n]
    return out.reshape(*x.shape[:-1], out_features)


@min_rows_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: int, out_features: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


def pad_small_gemms(model: torch.nn.Module) -> int:
    """Give every linear layer's CPU GEMM at least MIN_GEMM_ROWS rows, once its weights are processed."""
    from vllm.model_executor.layers.linear import LinearBase

    count = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if not isinstance(module, LinearBase) or method is None:
            continue

        def after_loading(layer: Any, _original=method.process_weights_after_loading) -> None:
            _original(layer)
            gemm = getattr(layer, "cpu_linear", None)
            if gemm is None:
                return
            index = len(_LINEARS)
            _LINEARS.append(gemm)
            out_features = int(layer.output_size_per_partition)
            layer.cpu_linear = lambda x, weight, bias: min_rows_linear(x, weight, bias, index, out_features)

        method.process_weights_after_loading = after_loading
        count += 1
    return count
