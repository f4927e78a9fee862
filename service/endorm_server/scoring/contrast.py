"""Criteria-contrast rewards (docs/contrast.md): the promptable part of the reward, with the prior cancelled.

Each response y is scored under two contexts of the same prompt x, per response token h:

    r^c_h     = r_h(x, c, y)        c = the item's ``system`` (the criteria)
    r^b_h     = r_h(x, b, y)        b = the baseline: the item without ``system`` (the chat template's
                                        default system turn), or ``baseline_system`` as its system turn
    r^Delta_h = r^c_h - r^b_h       (the same response tokens y_h under both)

With terminal zero and ``sum``, the telescoping identity of section 1 under each context gives

    sum_h r^Delta_h = alpha [log pi(y | x, c) - log pi(y | x, b)] + V_c(s_0) - V_b(s_0)

The V terms depend on the prompt only, so within one prompt the contrast ranks responses by how much
the criteria raise their likelihood (a pointwise mutual information), and the shared prior cancels.
Every aggregation is applied to r^Delta: ``mean`` / ``discounted`` to r^Delta_h, ``loglik_*`` to
log pi(y_h | x, c, y_<h) - log pi(y_h | x, b, y_<h), ``step_*`` to step sums of r^Delta_h.

Cost: a job (core/job.py) plans both contexts of every item and sends them to the engine together,
group-aware (scoring/grouping.py), so the G responses under c share one prompt and the G under b share
another: a contrast request computes the response tokens twice and two prompts, never 2G prompts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from endorm_server.errors import RequestError
from endorm_server.scoring import rewards, steps
from endorm_server.scoring.results import ScoredItem, ScoreOptions


@dataclass
class ContrastItem(ScoredItem):
    """A ScoredItem whose token_rewards, steps and score are r^Delta's, with both contexts' own results."""

    criteria: ScoredItem | None = None
    baseline: ScoredItem | None = None


def _name(prefix: str, field: str) -> str:
    return f"{prefix}.{field}" if prefix else field


def check_item(item: dict[str, Any], prefix: str = "") -> None:
    """A contrast needs a chat item (``messages``) with a criteria ``system``; RequestError names the missing field."""
    if item.get("messages") is None:
        raise RequestError(
            "contrast needs chat-form items: give messages (the baseline is the same chat "
            "without the criteria system turn)",
            _name(prefix, "messages"),
        )
    if item.get("system") is None:
        raise RequestError(
            "contrast needs a criteria system (the item's system field): the reward is "
            "the difference of the scores with and without it",
            _name(prefix, "system"),
        )


def baseline_item(item: dict[str, Any], baseline_system: str | None = None) -> dict[str, Any]:
    """The item under b: exactly as given without its ``system``, or with ``baseline_system`` in its place."""
    out = {k: v for k, v in item.items() if k != "system"}
    if baseline_system is not None:
        out["system"] = baseline_system
    return out


def _delta(c: rewards.TokenRewards, b: rewards.TokenRewards) -> rewards.TokenRewards:
    return rewards.TokenRewards(
        rewards=c.rewards - b.rewards, logprobs=c.logprobs - b.logprobs, v0=c.v0 - b.v0, v_end=c.v_end - b.v_end
    )


def _aggregate(tr: rewards.TokenRewards, stp: list[steps.Step] | None, options: ScoreOptions) -> float:
    if options.aggregation in steps.STEP_AGGREGATIONS:
        return steps.aggregate_steps(stp or [], options.aggregation)
    return rewards.aggregate(tr, options.aggregation, gamma=options.gamma, beta=options.beta)


def combine_one(c: ScoredItem, b: ScoredItem, options: ScoreOptions) -> ContrastItem:
    """The r^Delta result of one response from its result under the criteria and under the baseline."""
    if list(c.pair.response_ids) != list(b.pair.response_ids):  # the encoder keeps responses apart from prompts
        raise RequestError(
            "the response tokenized differently under the criteria and the baseline contexts", "response"
        )
    tr = _delta(c.token_rewards, b.token_rewards)
    stp = None
    if c.pair.step_spans is not None:
        stp = steps.step_stats(tr.rewards, tr.logprobs, c.pair.step_spans, c.pair.step_texts)
    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(ScoredItem)}
    return ContrastItem(
        **{**fields, "score": _aggregate(tr, stp, options), "token_rewards": tr, "steps": stp}, criteria=c, baseline=b
    )
