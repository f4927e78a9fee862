"""The pieces of ``--batch-invariant`` that need no engine: attention pieces, GEMM row padding, LM-head tiles,
the plan per attention ISA and the receipt it gives (service/endorm_server/engine/batch_invariant.py,
engine/vllm_plugin/batch_invariant.py)."""

from __future__ import annotations

import types

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from endorm_server.engine import batch_invariant as bi
from endorm_server.engine.vllm_plugin import batch_invariant as plugin
from endorm_server.engine.vllm_plugin.chunked_stats import chunked_token_stats


def _pieces_of(query_lens: list[int], done: list[int], tile: int) -> list[tuple[int, int, int, int]]:
    """(request, first position, last position + 1, keys) of every piece fixed_pieces cuts."""
    qsl = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    seq_lens = torch.tensor([d + q for d, q in zip(done, query_lens)], dtype=torch.int32)
    pqsl, pseq, req = plugin.fixed_pieces(qsl, seq_lens, tile)
    out = []
    for i in range(len(req)):
        r = int(req[i])
        start_pos = done[r] + int(pqsl[i]) - int(qsl[r])
        n = int(pqsl[i + 1] - pqsl[i])
        out.append((r, start_pos, start_pos + n, int(pseq[i])))
    return out


@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(1, 200)), min_size=1, max_size=12),
    st.sampled_from([1, 2, 4, 8, 16]),
)
def test_pieces_cut_at_absolute_multiples_of_the_tile(reqs, tile):
    """Every piece lies inside one tile of absolute positions [m*tile, (m+1)*tile), covers its request's
    queries in order with no gap, and its keys end at its last query: what a query's piece is depends on
    its position and where its chunk starts, never on the other requests of the step."""
    done, query_lens = [d for d, _ in reqs], [q for _, q in reqs]
    pieces = _pieces_of(query_lens, done, tile)
    assert sum(b - a for _, a, b, _ in pieces) == sum(query_lens)
    for r in range(len(reqs)):
        mine = [(a, b, keys) for rr, a, b, keys in pieces if rr == r]
        assert mine[0][0] == done[r] and mine[-1][1] == done[r] + query_lens[r]
        for (a, b, keys), nxt in zip(mine, mine[1:] + [None]):
            assert 0 < b - a <= tile and a // tile == (b - 1) // tile, "a piece crosses a tile boundary"
            assert keys == b, "a piece's keys must end at its last query (causal)"
            if nxt is not None:
                assert nxt[0] == b
    # the same requests alone: each piece is the same (the step's other requests change nothing)
    for r in range(len(reqs)):
        alone = [(a, b, keys) for _, a, b, keys in _pieces_of([query_lens[r]], [done[r]], tile)]
        assert alone == [(a, b, keys) for rr, a, b, keys in pieces if rr == r]


def test_pieces_of_a_chunked_request_start_where_the_chunk_does():
    # positions 0..9 in one step, or 0..5 then 6..9 (chunked prefill): pieces differ only where the cut is
    assert [(a, b) for _, a, b, _ in _pieces_of([10], [0], 4)] == [(0, 4), (4, 8), (8, 10)]
    cut = _pieces_of([6], [0], 4) + _pieces_of([4], [6], 4)
    assert [(a, b) for _, a, b, _ in cut] == [(0, 4), (4, 6), (6, 8), (8, 10)]


def test_query_tile_per_isa():
    assert plugin.query_tile("vec", 2, 1) == 4  # the tiny test llama: 2 query heads per KV head
    assert plugin.query_tile("vec", 9, 3) == 8  # SmolLM2: 3 per KV head, not a divisor of 8: one head at a time
    assert plugin.query_tile("vec16", 16, 1) == 1
    assert plugin.query_tile("amx", 2, 1) is None  # not checked: the plan falls back to the configuration
    assert plugin.query_tile("neon", 2, 1) is None


def test_small_gemms_run_on_at_least_min_rows(monkeypatch):
    seen: list[int] = []

    def gemm(x, weight, bias):
        seen.append(x.shape[0])
        return torch.nn.functional.linear(x, weight, bias)

    monkeypatch.setattr(plugin, "_LINEARS", [gemm])
    torch.manual_seed(0)
    w, b = torch.randn(96, 64), torch.randn(96)
    x = torch.randn(40, 64)
    full = plugin.min_rows_linear(x, w, b, 0, 96)
    for n in (1, 2, 3, 7, 15, 16, 17, 40):
        out = plugin.min_rows_linear(x[:n], w, b, 0, 96)
        assert out.shape == (n, 96)
        assert seen[-1] == max(n, plugin.MIN_GEMM_ROWS)
        assert torch.equal(out, full[:n]), f"{n} rows: not the rows of the 40-row product"
    three_d = plugin.min_rows_linear(x[:6].reshape(2, 3, 64), w, b, 0, 96)
    assert three_d.shape == (2, 3, 96) and torch.equal(three_d.reshape(6, 96), full[:6])


def test_lm_head_tiles_do_not_depend_on_the_other_rows():
    torch.manual_seed(1)
    head = torch.randn(300, 32)

    def logits(h):
        return h @ head.T

    hidden, targets = torch.randn(150, 32), torch.randint(0, 300, (150,))
    alone = plugin.fixed_tile_stats(hidden[:5], targets[:5], logits, alpha=1.0, tile=64)
    assert alone.shape == (5, 2)
    for n, at in ((70, 0), (150, 100), (150, 3)):  # the same 5 rows amid others, at other offsets in a tile
        rows = torch.cat([hidden[:at], hidden[:5], hidden[at : n - 5]])[:n]
        tg = torch.cat([targets[:at], targets[:5], targets[at : n - 5]])[:n]
        got = plugin.fixed_tile_stats(rows, tg, logits, alpha=1.0, tile=64)[at : at + 5]
        ref = chunked_token_stats(hidden[:5], targets[:5], logits, alpha=1.0, chunk_rows=64)
        assert torch.allclose(got, ref)
        if at % 64 == 0:  # same place in its tile, same tile shape: the same bits
            assert torch.equal(got, alone)


def _config(heads: int = 2, kv: int = 1, head_dim: int = 64):
    return types.SimpleNamespace(num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim)


@pytest.fixture()
def isa(monkeypatch):
    import vllm.v1.attention.backends.cpu_attn as cpu_attn

    chosen = {"isa": "vec"}
    monkeypatch.setattr(cpu_attn, "_get_attn_isa", lambda dtype, block, head: chosen["isa"])
    monkeypatch.delenv(bi.CPU_PATH_ENV, raising=False)
    return chosen


def test_plan_per_isa(isa, monkeypatch):
    assert bi.plan(False, True, "float32", _config(), 512, 128).path == "off"
    assert bi.plan(True, False, "float32", _config(), 512, 128).path == "vllm"
    kernels = bi.plan(True, True, "float32", _config(), 512, 128)
    assert (kernels.path, kernels.attention_tile, kernels.attention_isa, kernels.engine_overrides) == (
        "kernels",
        4,
        "vec",
        {},
    )
    isa["isa"] = "amx"  # a kernel whose tiling the split was not checked on: the configuration
    conf = bi.plan(True, True, "bfloat16", _config(), 512, 128)
    assert conf.path == "configuration" and conf.attention_tile == 0
    assert conf.engine_overrides == {
        "max_num_seqs": 1,
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": 512,
        "enable_prefix_caching": False,
    }
    isa["isa"] = "vec"
    monkeypatch.setenv(bi.CPU_PATH_ENV, "configuration")
    assert bi.plan(True, True, "float32", _config(), 512, 128).path == "configuration"
    monkeypatch.setenv(bi.CPU_PATH_ENV, "fast")
    with pytest.raises(ValueError, match="kernels or configuration"):
        bi.plan(True, True, "float32", _config(), 512, 128)


def test_receipt_says_what_the_bits_rest_on(isa, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    on = bi.receipt(bi.plan(True, True, "float32", _config(), 512, 128), gemm="torch", head_dtype="float32")
    assert on.batch_invariant is True
    assert on.threads == "2 (VLLM_CPU_OMP_THREADS_BIND=0-1)"
    assert "at least 16 rows" in on.gemm and "torch" in on.gemm
    assert "vec" in on.attention and "fixed 4-position pieces" in on.attention
    assert "64-row tiles" in on.lm_head and "chunked prefill" in on.scheduling
    isa["isa"] = "amx"
    conf = bi.receipt(bi.plan(True, True, "bfloat16", _config(), 512, 128), gemm="onednn", head_dtype="bfloat16")
    assert conf.batch_invariant and "one sequence per engine step" in conf.scheduling and "amx" in conf.attention
    isa["isa"] = "vec"
    off = bi.receipt(bi.plan(False, True, "float32", _config(), 512, 128), gemm="torch", head_dtype="float32")
    assert off.batch_invariant is False and "step's requests" in off.attention and "(vec)" in off.attention
    gpu = bi.receipt(bi.plan(True, False, "bfloat16", _config(), 512, 128), gemm=None, head_dtype="float32")
    assert gpu.batch_invariant and "VLLM_BATCH_INVARIANT=1" in gpu.gemm
    assert set(on.as_dict()) == {"batch_invariant", "threads", "gemm", "attention", "lm_head", "scheduling"}


def test_auto_is_on_where_the_kernels_path_applies(isa, monkeypatch):
    assert bi.resolve(True, on_cpu=False, dtype="bfloat16", config=_config()) is True  # asked: as asked
    assert bi.resolve(False, on_cpu=True, dtype="float32", config=_config()) is False
    assert bi.resolve("auto", on_cpu=True, dtype="float32", config=_config()) is True  # vec: kernels
    assert bi.resolve("auto", on_cpu=False, dtype="bfloat16", config=_config()) is False  # GPU: not verified here
    isa["isa"] = "amx"  # only the one-sequence-per-step configuration would make it: auto leaves it off
    assert bi.resolve("auto", on_cpu=True, dtype="bfloat16", config=_config()) is False
    isa["isa"] = "vec"
    monkeypatch.setenv(bi.CPU_PATH_ENV, "configuration")
    assert bi.resolve("auto", on_cpu=True, dtype="float32", config=_config()) is False


def test_the_flag_is_a_switch_whose_absence_means_auto(monkeypatch):
    import argparse

    from endorm_server.config import Settings
    from endorm_server.flags import add_settings_flags, settings_from_args

    monkeypatch.delenv("ENDORM_BATCH_INVARIANT", raising=False)
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    parse = lambda *argv: settings_from_args(parser.parse_args(list(argv)), parser).batch_invariant  # noqa: E731
    assert (parse(), parse("--batch-invariant"), parse("--no-batch-invariant")) == ("auto", True, False)
    monkeypatch.setenv("ENDORM_BATCH_INVARIANT", "false")
    assert Settings().batch_invariant is False
    monkeypatch.setenv("ENDORM_BATCH_INVARIANT", "auto")
    assert Settings().batch_invariant == "auto"
