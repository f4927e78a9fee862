"""Vocabulary-parallel [c_i, v_i] (token_stats with a process group) vs the full vocabulary.

Two spawned processes form a gloo group on 127.0.0.1; each holds an uneven
vocabulary shard of the same logits matrix and runs ``chunked_token_stats`` with
the group. Every rank must get exactly the single-process full-vocabulary result.
Worker exceptions propagate (``torch.multiprocessing.spawn(join=True)`` re-raises
them, non-zero exit codes included), and each rank leaves a marker file so a
worker that silently skipped its checks fails the test too.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from endorm_server.engine.vllm_plugin.chunked_stats import chunked_token_stats
from tests.server import free_port

WORLD = 2
VOCAB = 1000
SPLIT = 437  # rank 0: [0, 437), rank 1: [437, 1000) -- deliberately uneven
ROWS = 53
CHUNK_ROWS = 7  # 8 chunks, the last one partial
ALPHAS = (1.0, 0.5)
TOL = 1e-5


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    """Same (logits, targets) on every rank: fp32 logits ~ N(0, 4), varied targets."""
    gen = torch.Generator().manual_seed(1234)
    logits = torch.randn(ROWS, VOCAB, generator=gen, dtype=torch.float64) * 2.0
    # Rows whose maximum lives in one shard only, far above the rest: the
    # cross-rank max / rescaling in the reduction matters for them.
    logits[3, 10] = 40.0  # rank 0
    logits[4, 900] = 40.0  # rank 1
    logits[5, SPLIT] = 25.0  # first column of rank 1
    logits[6, SPLIT - 1] = -30.0
    targets = torch.randint(0, VOCAB, (ROWS,), generator=gen)
    targets[:6] = torch.tensor([0, SPLIT - 1, SPLIT, VOCAB - 1, 10, 900])
    return logits.float(), targets


def _reference(logits: torch.Tensor, targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """Full-vocabulary float64 [c, v], the obvious way."""
    z = logits.double()
    c = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    v = alpha * torch.logsumexp(z / alpha, dim=-1)
    return torch.stack([c, v], dim=-1)


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=300),  # a hang guard: two torch imports under load are slow
    )
    try:
        group = dist.new_group(list(range(WORLD)), backend="gloo")
        logits, targets = _problem()
        lo, hi = (0, SPLIT) if rank == 0 else (SPLIT, VOCAB)
        shard = logits[:, lo:hi].clone()
        in_shard = (targets >= lo) & (targets < hi)
        assert 0 < int(in_shard.sum()) < ROWS, "both shards must own some targets"

        # hidden rows = row indices; logits_fn returns this rank's shard of those rows
        calls: list[int] = []

        def logits_fn(rows: torch.Tensor) -> torch.Tensor:
            calls.append(rows.shape[0])
            return shard[rows.squeeze(-1).long()]

        hidden = torch.arange(ROWS, dtype=torch.float32).unsqueeze(-1)
        report = {}
        for alpha in ALPHAS:
            calls.clear()
            got = chunked_token_stats(
                hidden, targets, logits_fn, alpha=alpha, chunk_rows=CHUNK_ROWS, vocab_start=lo, group=group
            )
            assert calls == [CHUNK_ROWS] * (ROWS // CHUNK_ROWS) + [ROWS % CHUNK_ROWS], calls
            assert got.shape == (ROWS, 2) and got.dtype == torch.float32
            ref = _reference(logits, targets, alpha)
            single = chunked_token_stats(
                torch.arange(ROWS).unsqueeze(-1),
                targets,
                lambda r: logits[r.squeeze(-1)],
                alpha=alpha,
                chunk_rows=CHUNK_ROWS,
            )
            # The single-process path agrees with the obvious reference ...
            torch.testing.assert_close(single.double(), ref, rtol=0, atol=TOL)
            # ... and the sharded one with both (c and v).
            err = (got.double() - ref).abs().max(dim=0).values
            assert float(err[0]) <= TOL, f"rank {rank} alpha {alpha}: c max err {float(err[0])}"
            assert float(err[1]) <= TOL, f"rank {rank} alpha {alpha}: v max err {float(err[1])}"
            torch.testing.assert_close(got, single, rtol=0, atol=TOL)
            # The comparison has teeth: this shard's local logsumexp (no reduction)
            # and its local chosen logit are far from the full-vocabulary values.
            local_v = alpha * torch.logsumexp(shard.double() / alpha, dim=-1)
            assert float((local_v - ref[:, 1]).abs().max()) > 0.1
            assert bool((got[~in_shard, 0].double() - ref[~in_shard, 0]).abs().max() <= TOL)
            report[str(alpha)] = [float(err[0]), float(err[1])]
        dist.barrier(group=group)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_reference_catches_wrong_reduction():
    """Sanity check of the check: a naive per-shard 'sum of logsumexps' is rejected."""
    logits, targets = _problem()
    ref = _reference(logits, targets, 1.0)
    naive_v = torch.logsumexp(logits[:, :SPLIT].double(), -1) + torch.logsumexp(logits[:, SPLIT:].double(), -1)
    assert float((naive_v - ref[:, 1]).abs().max()) > TOL
    # The targets hit both shards, and the spread is real (not all logits equal).
    assert (targets < SPLIT).any() and (targets >= SPLIT).any()
    assert float(logits.std()) > 1.5


@pytest.mark.timeout(600)
def test_vocab_parallel_matches_full_vocab(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert sorted(report) == sorted(str(a) for a in ALPHAS)
        for alpha, (ec, ev) in report.items():
            assert ec <= TOL and ev <= TOL, (rank, alpha, ec, ev)
