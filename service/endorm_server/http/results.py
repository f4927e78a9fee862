"""A job's outcomes -> the response models /score and /compare share (per item, and usage)."""

from __future__ import annotations

from endorm_server.core.job import ScoreJob
from endorm_server.http.schemas import ErrorBody, ItemError, ScoreResult, StepResult, TokenReward, Usage
from endorm_server.http.schemas import Terms as TermsModel
from endorm_server.scoring.contrast import ContrastItem
from endorm_server.scoring.results import ItemFailure, Outcome, ScoredItem


def item_result(index: int, outcome: Outcome) -> ScoreResult | ItemError:
    if isinstance(outcome, ItemFailure):
        return ItemError(index=index, error=ErrorBody(**outcome.error.body()))
    return scored_result(index, outcome)


def scored_result(index: int, item: ScoredItem) -> ScoreResult:
    result = ScoreResult(
        index=index,
        score=item.score,
        num_tokens=item.num_tokens,
        prompt_tokens=len(item.pair.prompt_ids),
        truncated_tokens=item.truncated_tokens,
        tokens=_tokens(item),
        steps=_steps(item),
        terms=TermsModel(**vars(item.terms)) if item.terms is not None else None,
    )
    if isinstance(item, ContrastItem) and item.criteria is not None and item.baseline is not None:
        result.criteria_score, result.baseline_score = item.criteria.score, item.baseline.score
        for tok, rc, rb in zip(
            result.tokens or [], item.criteria.token_rewards.rewards, item.baseline.token_rewards.rewards
        ):
            tok.criteria_reward, tok.baseline_reward = float(rc), float(rb)
    return result


def _tokens(item: ScoredItem) -> list[TokenReward] | None:
    if item.token_texts is None:
        return None
    tr = item.token_rewards
    offsets: list[tuple[int, int] | None] = (
        list(item.token_offsets) if item.token_offsets else [None] * len(item.token_texts)
    )
    return [
        TokenReward(id=int(t), text=text, reward=float(r), logprob=float(lp), offset=off)
        for t, text, r, lp, off in zip(item.pair.response_ids, item.token_texts, tr.rewards, tr.logprobs, offsets)
    ]


def _steps(item: ScoredItem) -> list[StepResult] | None:
    if item.steps is None:
        return None
    return [
        StepResult(start=s.start, end=s.end, num_tokens=s.num_tokens, reward=s.reward, logprob=s.logprob, text=s.text)
        for s in item.steps
    ]


def usage(job: ScoreJob) -> Usage:
    prompt, total = job.usage()
    return Usage(prompt_tokens=prompt, total_tokens=total)
