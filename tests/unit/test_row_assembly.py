"""RowAssembly: one request's rows by position across chunks, cache hits and preemption restarts."""

from __future__ import annotations

import numpy as np
import torch

from endorm_server.engine.vllm_plugin.row_assembly import RowAssembly, parse_result


def _rows(a: int, b: int, tag: float = 0.0) -> torch.Tensor:
    """Rows for positions a .. b-1 whose values name their position (plus a tag per computation)."""
    p = torch.arange(a, b, dtype=torch.float32)
    return torch.stack([p + tag, -p - tag], dim=1)


def test_chunks_in_order_from_the_first_needed_position():
    asm = RowAssembly(first=5)
    asm.add(0, 4, _rows(4, 4))  # all before `first`: nothing kept
    asm.add(4, 8, _rows(5, 8))
    asm.add(8, 10, _rows(8, 10))
    offset, c, v, extra = parse_result(asm.result(10))
    assert offset == 5 and c.tolist() == [5, 6, 7, 8, 9] and v.tolist() == [-5, -6, -7, -8, -9] and extra.size == 0


def test_cache_hit_past_the_first_needed_position_is_reported_short():
    asm = RowAssembly(first=3)
    asm.add(8, 12, _rows(8, 12))  # a hit of 8 tokens: positions 3..7 never computed
    offset, c, _, _ = parse_result(asm.result(12))
    assert offset == 8 and c.tolist() == [8, 9, 10, 11]


def test_restart_after_preemption_replaces_rows_not_appends():
    asm = RowAssembly(first=0)
    asm.add(0, 4, _rows(0, 4, tag=0.5))
    asm.add(4, 6, _rows(4, 6, tag=0.5))  # preempted after this chunk
    asm.add(2, 6, _rows(2, 6))  # resumed with a cache hit of 2: positions 2.. recomputed
    asm.add(6, 8, _rows(6, 8))
    offset, c, _, _ = parse_result(asm.result(8))
    assert offset == 0 and asm.restarts == 1
    np.testing.assert_array_equal(c, [0.5, 1.5, 2, 3, 4, 5, 6, 7])  # 8 rows, stale 2..5 gone


def test_restart_from_zero_and_a_gap_after_a_restart():
    asm = RowAssembly(first=1)
    asm.add(0, 4, _rows(1, 4, tag=0.5))
    asm.add(0, 3, _rows(1, 3))  # recomputed from 0
    asm.add(3, 5, _rows(3, 5))
    offset, c, _, _ = parse_result(asm.result(5))
    assert offset == 1 and c.tolist() == [1, 2, 3, 4]
    gap = RowAssembly(first=0)
    gap.add(0, 2, _rows(0, 2))
    gap.add(4, 6, _rows(4, 6))  # resumed with a hit of 4 (another request cached more): 2, 3 missing
    assert parse_result(gap.result(6))[0] == 4


def test_extra_targets_and_their_restart():
    asm = RowAssembly(first=0, extra_targets=[(2, 7), (5, 9)])
    asm.add(0, 4, _rows(0, 4), {0: 42.0})
    asm.add(1, 6, _rows(1, 6), {1: 43.0})  # restart at 1 drops extra at position 2 (not recomputed here)
    _, _, _, extra = parse_result(asm.result(6))
    assert np.isnan(extra[0]) and extra[1] == 43.0
