"""One request's [c_p, v_p] rows, recorded by position across engine steps.

A pooling request arrives in chunks (chunked prefill) that start wherever the
scheduler put it: at 0, or at k after a prefix-cache hit of k tokens. After a
preemption vLLM keeps the runner's pooling state but recomputes the request
from 0 or from a new hit, so a chunk can start before (or after) where the last
one ended. Rows are therefore kept by position: a chunk starting at s replaces
every recorded row at a position >= s (those were computed before the restart);
rows below s are values of the same positions of the same tokens and stay.

The result is the contiguous run of rows that ends at N - 1. It starts at the
first needed position (``first``, = P - 1 for scoring) when everything needed
was computed, later when a cache hit covered needed positions: the caller then
completes the request another way (never a short result).

Output wire format (one float32 tensor, because that is what a pooler returns):
    row 0         [offset, n_extra]            offset = first position returned
    rows 1..n     [c_p, v_p] for p = offset .. N-1
    last n_extra  [c, nan] for the requested extra (position, token) pairs, NaN
                  where that position was not computed
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

FIRST_KEY = "endorm_first_position"  # PoolingParams.extra_kwargs: first position whose row is needed
EXTRA_KEY = "endorm_extra_targets"  # [[p, token], ...]: also c = logits_p[token] (a sibling's next token)


@dataclass
class RowAssembly:
    first: int
    extra_targets: list[tuple[int, int]] = field(default_factory=list)
    chunks: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (start position, rows)
    extra_c: dict[int, float] = field(default_factory=dict)  # index in extra_targets -> c
    expected: int | None = None  # where the next chunk starts if nothing restarted
    restarts: int = 0

    def add(self, start: int, end: int, rows: torch.Tensor, extra: dict[int, float] | None = None) -> None:
        """Record the rows of positions [max(start, first), end), computed in one step."""
        if self.expected is not None and start != self.expected:
            self.restarts += 1
            self.chunks = [(s, r[: start - s]) for s, r in self.chunks if s < start]
            self.extra_c = {i: c for i, c in self.extra_c.items() if self.extra_targets[i][0] < start}
        self.expected = end
        lo = max(start, self.first)
        if end > lo:
            assert rows.shape[0] == end - lo, (rows.shape, start, end, self.first)
            self.chunks.append((lo, rows))
        self.extra_c.update(extra or {})

    def result(self, n: int) -> torch.Tensor:
        """The wire-format tensor (see the module docstring) for a sequence of n tokens."""
        run: list[torch.Tensor] = []
        offset = n
        for s, r in sorted(self.chunks, key=lambda sr: sr[0], reverse=True):
            if s + r.shape[0] != offset:
                break
            run.append(r)
            offset = s
        n_extra = len(self.extra_targets)
        device = run[0].device if run else torch.device("cpu")
        head = torch.tensor([[float(offset), float(n_extra)]], device=device)
        extra = torch.full((n_extra, 2), float("nan"), device=device)
        for i, c in self.extra_c.items():
            extra[i, 0] = c
        return torch.cat([head, *reversed(run), extra])


def parse_result(data) -> tuple[int, Any, Any, Any]:
    """(offset, c, v, extra_c) as numpy float64 arrays from the wire-format tensor."""
    import numpy as np

    arr = data.numpy().astype(np.float64) if hasattr(data, "numpy") else np.asarray(data, dtype=np.float64)
    offset, n_extra = int(arr[0, 0]), int(arr[0, 1])
    rows = arr[1 : len(arr) - n_extra]
    return offset, rows[:, 0], rows[:, 1], arr[len(arr) - n_extra :, 0]
