"""``POST /score`` and ``POST /compare``: the API's own scoring routes.

ScoreRequest (schema) -> pipeline.encode (token ids, in the front-end pool) -> admission
-> Scorer.score_pairs (engine; reward math in the pool) -> ScoreResponse (built in the pool)
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from endorm_server.http import contrast as contrast_http
from endorm_server.http import pipeline
from endorm_server.http.auth import KeyedRoute
from endorm_server.http.schemas import (
    CompareRequest,
    CompareResponse,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    StepResult,
    TokenReward,
    Usage,
)
from endorm_server.inputs.tokenization import EncodedPair
from endorm_server.scoring import rewards
from endorm_server.scoring.scorer import ScoredItem

router = APIRouter(route_class=KeyedRoute, responses=pipeline.ERROR_RESPONSES)


def _result(index: int, item: ScoredItem, dropped: int) -> ScoreResult:
    tokens = None
    if item.token_texts is not None:
        tr = item.token_rewards
        offsets: list[tuple[int, int] | None] = (
            list(item.token_offsets) if item.token_offsets else [None] * len(item.token_texts)
        )
        tokens = [
            TokenReward(id=int(t), text=text, reward=float(r), logprob=float(lp), offset=off)
            for t, text, r, lp, off in zip(item.pair.response_ids, item.token_texts, tr.rewards, tr.logprobs, offsets)
        ]
    steps = None
    if item.steps is not None:
        steps = [
            StepResult(
                start=s.start, end=s.end, num_tokens=s.num_tokens, reward=s.reward, logprob=s.logprob, text=s.text
            )
            for s in item.steps
        ]
    return contrast_http.decorate(
        ScoreResult(
            index=index,
            score=item.score,
            num_tokens=item.num_tokens,
            prompt_tokens=len(item.pair.prompt_ids),
            truncated_tokens=dropped,
            tokens=tokens,
            steps=steps,
        ),
        item,
    )


def _usage(pairs: list[EncodedPair]) -> Usage:
    prompt = sum(len(p.prompt_ids) for p in pairs)
    return Usage(prompt_tokens=prompt, total_tokens=prompt + sum(len(p.response_ids) for p in pairs))


@router.post("/score", response_model=ScoreResponse, summary="Endogenous rewards for prompt/response pairs")
@router.post("/v1/score", response_model=ScoreResponse, include_in_schema=False)
async def score(body: ScoreRequest, request: Request):
    state = pipeline.service_state(request)
    scorer = pipeline.ready_scorer(state, request)
    options = pipeline.score_options(body, scorer)
    contrast_http.check_options(body)
    pipeline.check_item_count(state, len(body.items) * (2 if body.contrast else 1), "items")
    items = [it.encoder_kwargs() for it in body.items]
    base = contrast_http.score_baselines(items, body, "items") if body.contrast else None
    pairs, dropped = await pipeline.encode(scorer, items, options, body.add_eos, "items")
    if base is not None:  # criteria pairs, then baseline pairs: one group-aware engine call
        pairs, dropped = contrast_http.add_baselines(scorer, base, pairs, dropped, options, body.add_eos, "items")
    scored = await pipeline.score_pairs(request, state, scorer, pairs, options)
    if scored is None:
        return Response(status_code=499)
    if base is not None:
        scored = contrast_http.combine(scored, options)
    return await pipeline.render(
        scorer,
        lambda: ScoreResponse(
            model=scorer.model_name,
            alpha=scorer.info.alpha,
            system_fingerprint=scorer.system_fingerprint,
            aggregation=body.aggregation,
            results=[_result(i, s, d) for i, (s, d) in enumerate(zip(scored, dropped))],
            usage=_usage(pairs),
        ),
    )


@router.post("/compare", response_model=CompareResponse, summary="Rank N responses to one prompt")
@router.post("/v1/compare", response_model=CompareResponse, include_in_schema=False)
async def compare(body: CompareRequest, request: Request):
    state = pipeline.service_state(request)
    scorer = pipeline.ready_scorer(state, request)
    options = pipeline.score_options(body, scorer)
    responses = body.response_kwargs()
    param = "responses" if body.responses is not None else "responses_ids"
    contrast_http.check_options(body)
    pipeline.check_item_count(state, len(responses) * (2 if body.contrast else 1), param)
    prompt = body.prompt_kwargs()
    base = contrast_http.compare_baselines(prompt, responses, body) if body.contrast else None
    pairs, dropped = await pipeline.encode(scorer, [{**prompt, **r} for r in responses], options, body.add_eos, param)
    if base is not None:  # criteria pairs, then baseline pairs: one group-aware engine call
        pairs, dropped = contrast_http.add_baselines(scorer, base, pairs, dropped, options, body.add_eos, param)
    scored = await pipeline.score_pairs(request, state, scorer, pairs, options)
    if scored is None:
        return Response(status_code=499)
    if base is not None:
        scored = contrast_http.combine(scored, options)
    scores = [s.score for s in scored]
    order = rewards.ranking(scores)
    return await pipeline.render(
        scorer,
        lambda: CompareResponse(
            model=scorer.model_name,
            alpha=scorer.info.alpha,
            system_fingerprint=scorer.system_fingerprint,
            aggregation=body.aggregation,
            scores=scores,
            ranking=order,
            best=order[0],
            probabilities=rewards.preference_probabilities(scores).tolist(),
            results=[_result(i, s, d) for i, (s, d) in enumerate(zip(scored, dropped))],
            usage=_usage(pairs),
        ),
    )
