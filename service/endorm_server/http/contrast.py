"""``"contrast": true`` on ``/score`` and ``/compare``: the baseline items beside the request's, and the
r^Delta results (the math is scoring/contrast.py; this is only its request and response shape).

Both contexts go through the pipeline as one list (criteria items, then baseline items), so admission
counts every token the engine computes and GroupScheduler shares each context's prompt once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from endorm_server.http.schemas import RequestOptions, ScoreResult
from endorm_server.inputs.tokenization import EncodedPair, InputError
from endorm_server.scoring import contrast
from endorm_server.scoring.scorer import ScoredItem, ScoreOptions, Scorer


def check_options(body: RequestOptions) -> None:
    if body.baseline_system is not None and not body.contrast:
        raise InputError("baseline_system is only used with contrast: true", "baseline_system")


def score_baselines(items: Sequence[dict[str, Any]], body: RequestOptions, param: str) -> list[dict[str, Any]]:
    """/score: every item needs messages and a system (422 names ``items.<i>.messages`` / ``.system``)."""
    return contrast.baseline_items(items, body.baseline_system, param)


def compare_baselines(
    prompt: dict[str, Any], responses: Sequence[dict[str, Any]], body: RequestOptions
) -> list[dict[str, Any]]:
    """/compare: the shared prompt needs messages and a system (422 names ``messages`` / ``system``)."""
    contrast.check_item(prompt)
    base = contrast.baseline_item(prompt, body.baseline_system)
    return [{**base, **r} for r in responses]


def add_baselines(
    scorer: Scorer,
    baseline_items: list[dict[str, Any]],
    pairs: list[EncodedPair],
    dropped: list[int],
    options: ScoreOptions,
    add_eos: bool,
    param: str,
) -> tuple[list[EncodedPair], list[int]]:
    """The criteria pairs followed by the baseline pairs: the one list the pipeline scores."""
    from endorm_server.http.pipeline import encode_items

    base, base_dropped = encode_items(scorer, baseline_items, options, add_eos, param)
    return contrast.pairs_with_baseline(pairs, base), [*dropped, *base_dropped]


def combine(scored: list[ScoredItem], options: ScoreOptions) -> list[ScoredItem]:
    return list(contrast.combine(scored, options))


def decorate(result: ScoreResult, item: ScoredItem) -> ScoreResult:
    """Add both contexts' scores (and per-token rewards) to a contrast result; others pass unchanged."""
    if not isinstance(item, contrast.ContrastItem) or item.criteria is None or item.baseline is None:
        return result
    result.criteria_score, result.baseline_score = item.criteria.score, item.baseline.score
    for tok, rc, rb in zip(
        result.tokens or [], item.criteria.token_rewards.rewards, item.baseline.token_rewards.rewards
    ):
        tok.criteria_reward, tok.baseline_reward = float(rc), float(rb)
    return result
