"""``--batch-invariant`` by construction: a needle's bits whatever it shares the engine with.

The same needle items are scored alone, then amid 1..64 random companions (in one request, shuffled,
and as concurrent requests), with their prefix read from the cache (hits forced by scoring a sequence
with the same first blocks) or computed (misses forced by resetting the cache), with and without
group-aware scoring (the needle as a group's leader, whose LM head also runs extra targets, and as a
sibling whose rows come from the leader and the cache), and cut by chunked prefill wherever the
companions ahead of it in a step leave room (the two servers of tests/http/test_batch_invariance_http.py
add a fixed odd step budget). With the mode on every token's c, v, reward and log-prob and the score
must be bit-identical to the needle alone; with it off the same cases run on an engine started with the mode off
and the drift is printed, not asserted.

Dtypes: float32 always, and the machine's default (``--dtype auto``, engine/dtype.py: bfloat16 where the
CPU computes it natively, else float32, then the float32 case already covers it). bfloat16 runs where
the CPU has native bf16 and skips with its reason elsewhere.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import numpy as np
import pytest

from endorm_server.engine.base import SequenceStats
from endorm_server.engine.dtype import CPU_BF16_FLAGS, cpu_flags, machine_dtype
from endorm_server.engine.vllm_engine import VllmEngine
from endorm_server.inputs.tokenization import EncodedPair
from endorm_server.scoring import rewards
from endorm_server.scoring.grouping import GroupScheduler
from tests.conftest import engine_settings, tiny_model

VOCAB = 512
BLOCK = 128  # vLLM's CPU KV-cache block: cache hits are multiples of it
COMPANIONS = (1, 5, 24, 64)

_engines: dict[str, VllmEngine] = {}


async def _invariant_engine(dtype: str) -> VllmEngine:
    if dtype not in _engines:
        model = tiny_model("llama")
        engine = VllmEngine(engine_settings(model, dtype=dtype, batch_invariant=True), str(model))
        await engine.start()
        _engines[dtype] = engine
    return _engines[dtype]


@pytest.fixture(scope="module", autouse=True)
async def _shutdown_invariant_engines():
    yield
    for engine in _engines.values():
        await engine.shutdown()
    _engines.clear()


def _dtypes() -> list[pytest.param]:
    default = machine_dtype("auto", tiny_model("llama")).dtype
    native = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
    bf16 = pytest.param(
        "bfloat16",
        marks=pytest.mark.skipif(
            not native,
            reason=f"no native bf16 on this CPU (none of {', '.join(CPU_BF16_FLAGS)}): --dtype auto is {default} "
            "here, covered by the float32 case",
        ),
    )
    return [pytest.param("float32"), bf16]


# ------------------------------------------------------------------------------------------- items


@dataclass
class Needle:
    name: str
    prompt: list[int]
    response: list[int]

    @property
    def seq(self) -> list[int]:
        return self.prompt + self.response

    @property
    def pair(self) -> EncodedPair:
        return EncodedPair(prompt_ids=list(self.prompt), response_ids=list(self.response))


def _ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def _needles(seed: int) -> list[Needle]:
    """A long needle cut by every 128-token step, past four cache blocks and long enough for vLLM's own
    attention split to move its bits amid companions (shorter ones did not move here); a short one; one
    whose prompt ends mid-tile (odd lengths, so pieces start between multiples of the attention tile)."""
    rng = random.Random(seed)
    return [
        Needle("long", _ids(rng, 561), _ids(rng, 80)),
        Needle("short", _ids(rng, 9), _ids(rng, 14)),
        Needle("odd", _ids(rng, 131), _ids(rng, 29)),
    ]


def _companion(rng: random.Random) -> EncodedPair:
    return EncodedPair(prompt_ids=_ids(rng, rng.randrange(1, 120)), response_ids=_ids(rng, rng.randrange(1, 60)))


@dataclass(frozen=True)
class Bits:
    """Everything the service returns for one item, as the bytes that must not move."""

    c: bytes
    v: bytes
    rewards: np.ndarray
    logprobs: np.ndarray
    score: float

    @classmethod
    def of(cls, st: SequenceStats, prompt_len: int) -> Bits:
        assert st.offset == prompt_len - 1, "rows must cover exactly P-1 .. N-1"
        tr = rewards.token_rewards(st.c, st.v, prompt_len - st.offset)
        return cls(st.c.tobytes(), st.v.tobytes(), tr.rewards, tr.logprobs, rewards.aggregate(tr, "sum"))

    def same(self, other: Bits) -> bool:
        return (
            self.c == other.c
            and self.v == other.v
            and self.rewards.tobytes() == other.rewards.tobytes()
            and self.logprobs.tobytes() == other.logprobs.tobytes()
            and np.float64(self.score).tobytes() == np.float64(other.score).tobytes()
        )

    def distance(self, other: Bits) -> float:
        return float(np.max(np.abs(self.rewards - other.rewards)))


def _rows_from(st: SequenceStats, start: int) -> tuple[bytes, bytes]:
    """c, v of positions start.. of a result that may begin later (a cache hit), as bytes."""
    k = start - st.offset
    return st.c[k:].tobytes(), st.v[k:].tobytes()


@dataclass
class Tally:
    """Per case: how many needle scorings were compared and which were not bit-identical."""

    cases: dict[str, list[float]] = field(default_factory=dict)

    def add(self, case: str, distance: float) -> None:
        self.cases.setdefault(case, []).append(distance)

    def differing(self) -> dict[str, list[float]]:
        return {k: [d for d in v if d != 0.0 or np.isnan(d)] for k, v in self.cases.items() if any(d != 0.0 for d in v)}

    def report(self, title: str) -> str:
        lines = [title]
        for case, ds in self.cases.items():
            moved = [d for d in ds if d != 0.0]  # NaN: the rewards agree, c or v does not
            finite = [d for d in ds if not np.isnan(d)]
            lines.append(
                f"  {case:28s} {len(moved):3d}/{len(ds):3d} not bit-identical, max |dr| {max(finite, default=0.0):.3g}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the cases


async def _needle_cases(engine: VllmEngine, seed: int) -> Tally:
    """Every case of the module docstring; each needle scoring's max |dr| from the needle alone (0: identical).

    Bit-identity is decided on c, v, rewards, log-probs and score (``Bits.same``): a case counts as moved
    (distance NaN where the rewards agree but another field does not) when any of them differs."""
    rng = random.Random(seed)
    needles = _needles(seed)
    tally = Tally()
    groups = GroupScheduler(engine)

    def record(case: str, n: Needle, ref: Bits, got: Bits) -> None:
        tally.add(case, 0.0 if got.same(ref) else (got.distance(ref) or float("nan")))

    async def alone(n: Needle, **kw) -> SequenceStats:
        return await engine.token_stats(n.seq, first=len(n.prompt) - 1, **kw)

    await engine.reset_prefix_cache()
    refs = {n.name: Bits.of(await alone(n), len(n.prompt)) for n in needles}
    for n in needles:  # alone again, and alone through the group scheduler (reads the cache: a hit recomputes)
        record("alone, again", n, refs[n.name], Bits.of(await alone(n), len(n.prompt)))
        record("alone, group scheduler", n, refs[n.name], Bits.of((await groups.stats([n.pair]))[0], len(n.prompt)))

    # Prefix cache: a miss forced (cache reset) and a hit forced (a sequence with the same first blocks first).
    for n in needles:
        await engine.reset_prefix_cache()
        st = await alone(n, read_cache=True)
        assert st.offset == len(n.prompt) - 1 and st.cached_tokens == 0, "the reset left a cached prefix"
        record("prefix cache miss", n, refs[n.name], Bits.of(st, len(n.prompt)))
        if len(n.seq) > BLOCK and engine.invariance.path != "configuration":  # that path keeps the cache off
            await engine.token_stats(n.seq[: (len(n.seq) - 1) // BLOCK * BLOCK] + _ids(rng, 40))
            st = await engine.token_stats(n.seq, first=0, read_cache=True)
            assert st.cached_tokens >= BLOCK and st.offset == st.cached_tokens, "no cache hit was forced"
            full = await engine.token_stats(n.seq, first=0)
            same = _rows_from(st, st.offset) == _rows_from(full, st.offset)
            tally.add("prefix cache hit (rows after)", 0.0 if same else float("nan"))

    # Group-aware scoring: the needle as a sibling (its prompt from the leader and the cache) and as the
    # leader of siblings that diverge inside its response (extra targets in its LM-head call).
    for n in needles:
        leader = EncodedPair(prompt_ids=list(n.prompt), response_ids=_ids(rng, 33))
        got = await groups.stats([leader, n.pair])
        record("group sibling", n, refs[n.name], Bits.of(got[1], len(n.prompt)))
        cut = max(1, len(n.response) // 2)
        sibs = [EncodedPair(prompt_ids=list(n.prompt), response_ids=n.response[:cut] + _ids(rng, 20)) for _ in range(3)]
        got = await groups.stats([n.pair, *sibs])
        record("group leader, extra targets", n, refs[n.name], Bits.of(got[0], len(n.prompt)))

    # Companions: in one request (shuffled), as concurrent requests, and with the cache read or not.
    for k in COMPANIONS:
        for n in needles:
            pairs = [_companion(rng) for _ in range(k)] + [n.pair]
            rng.shuffle(pairs)
            at = pairs.index(n.pair)
            got = await groups.stats(pairs)
            record("amid companions, 1 request", n, refs[n.name], Bits.of(got[at], len(n.prompt)))

            async def plain(p: EncodedPair) -> SequenceStats:
                return await engine.token_stats(p.prompt_ids + p.response_ids, first=len(p.prompt_ids) - 1)

            outs = await asyncio.gather(*(plain(p) for p in pairs))  # no group-aware scoring, cache not read
            record("amid companions, plain", n, refs[n.name], Bits.of(outs[at], len(n.prompt)))

            chunks = [pairs[i : i + max(1, k // 4)] for i in range(0, len(pairs), max(1, k // 4))]
            answers = await asyncio.gather(*(groups.stats(c) for c in chunks))  # concurrent requests
            flat = [st for a in answers for st in a]
            record("amid companions, concurrent", n, refs[n.name], Bits.of(flat[at], len(n.prompt)))
    return tally


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("dtype", _dtypes())
async def test_needle_bit_identical_with_the_mode(dtype):
    engine = await _invariant_engine(dtype)
    assert engine.invariance.path in ("kernels", "configuration")
    print(f"\n[batch-invariant] {dtype}: path {engine.invariance.path}, receipt {engine.determinism}")
    tally = await _needle_cases(engine, seed=29)
    print(tally.report(f"[batch-invariant] {dtype}, mode on:"))
    assert sum(len(v) for v in tally.cases.values()) >= 50
    assert not tally.differing(), tally.report("not bit-identical with --batch-invariant:")


@pytest.mark.parametrize("dtype", _dtypes())
async def test_needle_drift_without_the_mode(dtype):
    """The same cases with the mode off (``--no-batch-invariant``): reported, not asserted (only that the cases
    ran)."""
    model = tiny_model("llama")
    engine = VllmEngine(engine_settings(model, dtype=dtype, batch_invariant=False), str(model))
    await engine.start()
    try:
        assert engine.invariance.path == "off"
        tally = await _needle_cases(engine, seed=29)
        print("\n" + tally.report(f"[batch-invariant] {dtype}, mode OFF (drift, not asserted):"))
        assert sum(len(v) for v in tally.cases.values()) >= 50
    finally:
        await engine.shutdown()
