"""A scoring request as one job: plan every sequence it needs, run each once, combine the answers.

    ScoreJob.plan  items -> token ids, in the front-end pool: each item's pair (and its contrast
                   baseline), one truncation per shared prompt, identical sequences folded into one
    ScoreJob.run   admission (the in-flight token budget) -> engine (scoring/grouping.py: one leader
                   per shared prompt) -> combine, in the pool: rewards, contrast, aggregation, steps,
                   terms -> one outcome per item, in input order

An item that cannot be scored fails alone (``item_errors="report"``: an ItemFailure in its place) or
fails the job (``"reject"``: the first failing item's error). Either way every other item is computed
exactly as if it had been sent alone: duplicates and shared prompts change what runs, never a result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from endorm_server.engine.base import EngineError, SequenceStats
from endorm_server.errors import RequestError
from endorm_server.inputs.offsets import response_offsets
from endorm_server.inputs.tokenization import EncodedPair
from endorm_server.scoring import contrast, rewards, steps
from endorm_server.scoring.aggregations import AGGREGATIONS, STEP_AGGREGATIONS, TERMINALS, Terminal
from endorm_server.scoring.results import ItemFailure, Outcome, ScoredItem, ScoreOptions, Terms

if TYPE_CHECKING:
    from endorm_server.core.scorer import Scorer

ItemErrors = Literal["reject", "report"]
ITEM_OPTION_FIELDS = ("add_eos", "terminal")  # an item may override these request options


@dataclass(frozen=True)
class JobSpec:
    """What a route (or the Python API) asks: items in the /score item form, and the request's options."""

    items: Sequence[dict[str, Any] | RequestError]  # an error: the route could not map that item
    options: ScoreOptions = ScoreOptions()
    param: str = "items"  # how errors name an item: items.3.response
    add_eos: bool = True
    contrast: bool = False
    baseline_system: str | None = None
    item_errors: ItemErrors = "reject"


@dataclass
class _Planned:
    """One item: its sequences (criteria, then baseline with contrast) and the engine unit of each."""

    index: int
    pairs: list[EncodedPair]
    terminal: Terminal
    dropped: list[int] = field(default_factory=list)
    units: list[int] = field(default_factory=list)


def check_options(options: ScoreOptions) -> None:
    """The request-level options, validated once (the schemas check types; this checks meaning)."""
    if options.aggregation not in AGGREGATIONS:
        raise RequestError(f"unknown aggregation {options.aggregation!r}", "aggregation")
    if options.terminal not in TERMINALS:
        raise RequestError(f"terminal must be one of {TERMINALS}, got {options.terminal!r}", "terminal")
    rewards.discount_weights(0, options.gamma, options.beta)


class ScoreJob:
    def __init__(self, scorer: Scorer, spec: JobSpec, planned: list[_Planned | ItemFailure], units: list[EncodedPair]):
        self.scorer = scorer
        self.spec = spec
        self.planned = planned
        self.units = units  # distinct sequences the engine computes
        self.waited_s = 0.0  # time spent waiting for admission

    # --- plan ------------------------------------------------------------------

    @classmethod
    async def plan(cls, scorer: Scorer, spec: JobSpec) -> ScoreJob:
        """Encode and fit every item in the front-end pool (tokenization never runs on the event loop)."""
        check_options(spec.options)
        return await scorer.off_loop(cls._plan, scorer, spec)

    @classmethod
    def _plan(cls, scorer: Scorer, spec: JobSpec) -> ScoreJob:
        planned: list[_Planned | ItemFailure] = []
        for i, item in enumerate(spec.items):
            if isinstance(item, RequestError):
                planned.append(ItemFailure(i, item))
                continue
            try:
                planned.append(_encode(scorer, spec, i, item))
            except RequestError as exc:
                planned.append(ItemFailure(i, exc.at(f"{spec.param}.{i}")))
        n_contexts = 2 if spec.contrast else 1
        for k in range(n_contexts):
            _fit_groups(planned, k, scorer.info.max_model_len, spec.options.truncate, spec.param)
        return cls(scorer, spec, planned, _fold_duplicates(planned))

    # --- what it costs and what it is --------------------------------------------

    @property
    def failures(self) -> list[ItemFailure]:
        return [p for p in self.planned if isinstance(p, ItemFailure)]

    @property
    def computed_tokens(self) -> int:
        return sum(len(u.prompt_ids) + len(u.response_ids) for u in self.units)

    @property
    def sequences(self) -> int:
        """Sequences the request stands for (contrast: two per item), counting duplicates."""
        return sum(len(p.pairs) for p in self.planned if isinstance(p, _Planned))

    def usage(self) -> tuple[int, int]:
        """(prompt tokens, total tokens) of every sequence the request stands for, as scored."""
        pairs = [pair for p in self.planned if isinstance(p, _Planned) for pair in p.pairs]
        prompt = sum(len(p.prompt_ids) for p in pairs)
        return prompt, prompt + sum(len(p.response_ids) for p in pairs)

    # --- run -------------------------------------------------------------------

    async def run(self, *, exempt_from_drain: bool = True) -> list[Outcome]:
        """Admission, the engine, then the reward math; one outcome per item, in input order.

        ``exempt_from_drain``: the request arrived before draining began, so it still runs.
        """
        if self.spec.item_errors == "reject" and self.failures:
            raise self.failures[0].error
        admission = self.scorer.admission
        stats: list[SequenceStats] = []
        if self.units:
            async with admission.admit(self.computed_tokens, exempt_from_drain=exempt_from_drain) as waited:
                self.waited_s = waited
                try:
                    stats = await self.scorer.groups.stats(self.units)
                except EngineError as exc:
                    raise RequestError(
                        f"engine unavailable: {exc}",
                        status=503,
                        code="engine_unavailable",
                        headers={"Retry-After": str(admission.retry_after_s)},
                    ) from exc
        return await self.scorer.off_loop(self._combine, stats)

    # --- combine ---------------------------------------------------------------

    def _combine(self, stats: list[SequenceStats]) -> list[Outcome]:
        out: list[Outcome] = []
        for p in self.planned:
            if isinstance(p, ItemFailure):
                out.append(p)
                continue
            try:
                out.append(self._result(p, stats))
            except RequestError as exc:
                failure = ItemFailure(p.index, exc.at(f"{self.spec.param}.{p.index}"))
                if self.spec.item_errors == "reject":
                    raise failure.error from None
                out.append(failure)
        return out

    def _result(self, p: _Planned, stats: list[SequenceStats]) -> ScoredItem:
        options, alpha = self.spec.options, self.scorer.info.alpha
        scored = [
            _scored(pair, stats[u], p.terminal, options, alpha, dropped)
            for pair, u, dropped in zip(p.pairs, p.units, p.dropped)
        ]
        item = contrast.combine_one(scored[0], scored[1], options) if self.spec.contrast else scored[0]
        if options.return_tokens:
            encoder = self.scorer.encoder
            item.token_texts = encoder.decode_tokens(item.pair.response_ids)
            item.token_offsets = response_offsets(encoder, item.pair)
        if options.return_terms:
            item.terms = Terms.of(item.token_rewards, alpha)
        return item


def _encode(scorer: Scorer, spec: JobSpec, index: int, item: dict[str, Any]) -> _Planned:
    """One item -> its pairs (criteria, then baseline with contrast), with the item's own options."""
    own = {k: item[k] for k in ITEM_OPTION_FIELDS if item.get(k) is not None}
    item = {k: v for k, v in item.items() if k not in ITEM_OPTION_FIELDS}
    terminal = own.get("terminal", spec.options.terminal)
    if terminal not in TERMINALS:
        raise RequestError(f"terminal must be one of {TERMINALS}, got {terminal!r}", "terminal")
    contexts = [item]
    if spec.contrast:
        contrast.check_item(item)
        contexts.append(contrast.baseline_item(item, spec.baseline_system))
    pairs = [scorer.encode(c, add_eos=own.get("add_eos", spec.add_eos)) for c in contexts]
    if spec.options.aggregation in STEP_AGGREGATIONS and pairs[0].step_spans is None:
        raise RequestError(
            f"aggregation {spec.options.aggregation} needs steps: give steps, step_separator "
            "or step_ends with every response",
            "steps",
            code="steps_required",
        )
    return _Planned(index=index, pairs=pairs, terminal=terminal, dropped=[0] * len(pairs))


def _fit_groups(planned: list[_Planned | ItemFailure], k: int, limit: int, truncate: bool, param: str) -> None:
    """Fit context ``k`` of every item to ``limit`` tokens; items that share a prompt are cut alike.

    Without ``truncate`` an item over the limit fails (413). With it, the items sharing a prompt drop
    the same number of leading prompt tokens, enough for the group's longest response that can fit at
    all, so V(s_0) still cancels between them and they still share one prefix; an item that cannot fit
    even with one prompt token left fails.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, p in enumerate(planned):
        if isinstance(p, _Planned):
            groups.setdefault(tuple(p.pairs[k].prompt_ids), []).append(j)
    for prompt, members in groups.items():
        excess = {j: len(prompt) + len(_pair(planned, j, k).response_ids) - limit for j in members}
        fits = [j for j in members if excess[j] <= 0 or (truncate and excess[j] < len(prompt))]
        for j in members:
            if j not in fits:
                total = excess[j] + limit
                why = " even after dropping the whole prompt but one token" if truncate else ""
                err = RequestError(
                    f"prompt + response is {total} tokens, over max_model_len {limit}{why}",
                    "response" if truncate else None,
                    status=413,
                    code="sequence_too_long",
                )
                planned[j] = ItemFailure(planned[j].index, err.at(f"{param}.{planned[j].index}"))
        cut = max([excess[j] for j in fits] + [0])
        for j in fits if cut > 0 else ():
            p = planned[j]
            assert isinstance(p, _Planned)
            p.pairs[k] = dataclasses.replace(p.pairs[k], prompt_ids=p.pairs[k].prompt_ids[cut:])
            p.dropped[k] = cut


def _pair(planned: list[_Planned | ItemFailure], j: int, k: int) -> EncodedPair:
    p = planned[j]
    assert isinstance(p, _Planned)
    return p.pairs[k]


def _fold_duplicates(planned: list[_Planned | ItemFailure]) -> list[EncodedPair]:
    """The distinct token sequences, each computed once; every item's pairs point at theirs."""
    units: list[EncodedPair] = []
    seen: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    for p in planned:
        if isinstance(p, ItemFailure):
            continue
        for pair in p.pairs:
            key = (tuple(pair.prompt_ids), tuple(pair.response_ids))
            if key not in seen:
                seen[key] = len(units)
                units.append(pair)
            p.units.append(seen[key])
    return units


def _scored(
    pair: EncodedPair, st: SequenceStats, terminal: Terminal, options: ScoreOptions, alpha: float, dropped: int
) -> ScoredItem:
    """One sequence's engine stats -> rewards and score (st covers positions st.offset .. N-1)."""
    tr = rewards.token_rewards(st.c, st.v, len(pair.prompt_ids) - st.offset, alpha=alpha, terminal=terminal)
    stp = None
    if pair.step_spans is not None:
        stp = steps.step_stats(tr.rewards, tr.logprobs, pair.step_spans, pair.step_texts)
    if options.aggregation in STEP_AGGREGATIONS:
        score = steps.aggregate_steps(stp or [], options.aggregation)
    else:
        score = rewards.aggregate(tr, options.aggregation, gamma=options.gamma, beta=options.beta)
    return ScoredItem(score=score, pair=pair, token_rewards=tr, truncated_tokens=dropped, steps=stp)
