"""Group-aware scoring: a prompt shared by G responses is computed once.

GRPO/RLOO groups and ``/compare`` send G responses to one prompt. Items whose
prompt token ids are equal form a group; its first item (the leader) goes to
the engine first, the others (siblings) once the leader has finished, so the
prompt's KV blocks are in vLLM's prefix cache and a sibling computes only what
follows its cache hit. Distinct groups run concurrently.

Every result covers positions P-1 .. N-1 exactly (V(s_0) = v_{P-1} is the first
value the rewards read; the LM head runs on no earlier row). A cache hit is
whole blocks, so it can cover position P-1 (whenever the block size divides P)
or go into the response when siblings share its first tokens. The rows the hit
skipped are then taken from the leader, which ran on the same tokens:
    v_p        = leader v_p                 for p < d (d = first index where the two sequences differ)
    c_p        = leader c_p                 for p + 1 < d (same next token)
    c_{d-1}    = leader logits_{d-1}[x_d]   asked of the leader as an extra target
When that is not possible (the hit came from another sequence, or the leader
never computed the row), the request is resubmitted without reading the cache:
exact, and counted. Correctness never depends on the order requests ran in.

The same engine call (sequence, first row, cache use, extra targets) made by two requests at once
runs once (scoring/shared_calls.py). A group runs under one TaskGroup: a failing call cancels its
siblings, so nothing keeps computing for a request that has already failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Sequence, TypeVar, cast

import numpy as np

from endorm_server.engine.base import PrefixReuseEngine, SequenceStats, TokenStatsEngine
from endorm_server.inputs.tokenization import EncodedPair
from endorm_server.scoring.shared_calls import SharedCalls

T = TypeVar("T")


@dataclass
class ReuseCounters:
    """Totals since start (read by the Prometheus collector in service/endorm_server/http/reuse_metrics.py)."""

    cached_prompt_tokens: int = 0  # tokens vLLM served from its prefix cache
    lm_head_rows_computed: int = 0  # rows the LM head ran on (needed rows + extra targets)
    lm_head_rows_skipped: int = 0  # positions of scored sequences that needed no LM-head row
    rows_from_leader: int = 0  # rows a cache hit skipped, taken from the group's leader
    resubmissions: int = 0  # requests re-run without the cache because needed rows were skipped
    shared_calls: int = 0  # engine calls served by an identical call already in flight


async def all_of(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Await all under one TaskGroup (the first failure cancels the rest); raise that failure itself."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_await(a)) for a in aws]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return [t.result() for t in tasks]


async def _await(a: Awaitable[T]) -> T:
    return await a


def divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """First index where a and b differ (the shorter length if one is a prefix of the other)."""
    n = min(len(a), len(b))
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


class GroupScheduler:
    def __init__(self, engine: TokenStatsEngine, counters: ReuseCounters | None = None) -> None:
        self.engine = engine
        self.counters = counters or ReuseCounters()
        self._calls: SharedCalls[SequenceStats] = SharedCalls()

    @property
    def enabled(self) -> bool:
        return bool(getattr(self.engine, "supports_prefix_reuse", False))

    async def stats(self, pairs: Sequence[EncodedPair]) -> list[SequenceStats]:
        """SequenceStats per pair, each covering positions P-1 .. N-1 (offset P-1), in input order."""
        if not self.enabled:  # e.g. the transformers reference engine: nothing to share
            return await all_of([self.engine.token_stats(p.prompt_ids + p.response_ids) for p in pairs])
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pairs):
            groups.setdefault(tuple(p.prompt_ids), []).append(i)
        seqs = [list(p.prompt_ids) + list(p.response_ids) for p in pairs]
        out: list[SequenceStats | None] = [None] * len(pairs)

        async def run(members: list[int]) -> None:
            first = max(0, len(pairs[members[0]].prompt_ids) - 1)  # an empty prompt is refused by the reward math
            results = await self._group([seqs[i] for i in members], first)
            for i, st in zip(members, results):
                out[i] = st

        await all_of([run(m) for m in groups.values()])
        return out  # type: ignore[return-value]

    async def _group(self, seqs: list[list[int]], first: int) -> list[SequenceStats]:
        leader, siblings = seqs[0], seqs[1:]
        extras = sorted(
            {(d - 1, s[d]) for s in siblings if first < (d := divergence(leader, s)) < min(len(leader), len(s))}
        )
        lead = await self._complete(leader, first, extras)
        extra_c = dict(zip(extras, lead.extra_c if lead.extra_c is not None else []))
        rest = await all_of([self._sibling(s, first, leader, lead, extra_c) for s in siblings])
        return [lead, *rest]

    async def _submit(self, seq: list[int], first: int, read_cache: bool, extras=()) -> SequenceStats:
        key = (tuple(seq), first, read_cache, tuple(extras))
        if self._calls.running(key):
            self.counters.shared_calls += 1
        return await self._calls.run(key, lambda: self._compute(seq, first, read_cache, extras))

    async def _compute(self, seq: list[int], first: int, read_cache: bool, extras) -> SequenceStats:
        engine = cast(PrefixReuseEngine, self.engine)  # enabled only where supports_prefix_reuse
        st = await engine.token_stats(seq, first=first, read_cache=read_cache, extra_targets=extras)
        c = self.counters
        c.cached_prompt_tokens += st.cached_tokens
        c.lm_head_rows_computed += len(st.c) + len(extras)
        c.lm_head_rows_skipped += st.offset
        return st

    async def _complete(self, seq: list[int], first: int, extras=()) -> SequenceStats:
        st = await self._submit(seq, first, True, extras)
        if st.offset == first:
            return st
        self.counters.resubmissions += 1
        return await self._submit(seq, first, False, extras)

    async def _sibling(
        self, seq: list[int], first: int, leader: list[int], lead: SequenceStats, extra_c: dict[tuple[int, int], float]
    ) -> SequenceStats:
        st = await self._submit(seq, first, True)
        if st.offset == first:
            return st
        filled = fill_from_leader(seq, st, first, leader, lead, extra_c)
        if filled is not None:
            self.counters.rows_from_leader += st.offset - first
            return filled
        self.counters.resubmissions += 1
        return await self._submit(seq, first, False)


def fill_from_leader(
    seq: Sequence[int],
    st: SequenceStats,
    first: int,
    leader: Sequence[int],
    lead: SequenceStats,
    extra_c: dict[tuple[int, int], float],
) -> SequenceStats | None:
    """Rows first .. st.offset-1 of seq from the leader's rows (see the module docstring), or None."""
    d = divergence(leader, seq)
    k = st.offset
    if k > d or lead.offset > first:
        return None  # rows at p >= d have a different prefix: the leader's are not seq's
    p = np.arange(first, k)
    v = lead.v[p - lead.offset]
    c = lead.c[p - lead.offset].copy()
    if k == d and k > first:  # c_{d-1} scores seq's own next token x_d
        if d == len(seq):
            c[-1] = np.nan  # the last position of seq has no next token
        else:
            got = extra_c.get((d - 1, int(seq[d])))
            if got is None or not np.isfinite(got):
                return None
            c[-1] = got
    return SequenceStats(
        c=np.concatenate([c, st.c]),
        v=np.concatenate([v, st.v]),
        offset=first,
        extra_c=st.extra_c,
        cached_tokens=st.cached_tokens,
    )
