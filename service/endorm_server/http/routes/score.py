"""``POST /score`` and ``POST /compare``: the API's own scoring routes.

ScoreRequest -> JobSpec -> pipeline.respond (core/job.py: plan, admission, engine, reward math)
             -> ScoreResponse / CompareResponse (built in the front-end pool)
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from endorm_server.core.job import ScoreJob
from endorm_server.core.scorer import Scorer
from endorm_server.http import pipeline
from endorm_server.http.auth import KeyedRoute
from endorm_server.http.results import item_result, usage
from endorm_server.http.schemas import CompareRequest, CompareResponse, ScoreRequest, ScoreResponse
from endorm_server.scoring import contrast, rewards
from endorm_server.scoring.results import Outcome, ScoredItem

router = APIRouter(route_class=KeyedRoute, responses=pipeline.ERROR_RESPONSES)


@router.post("/score", response_model=ScoreResponse, summary="Endogenous rewards for prompt/response pairs")
@router.post("/v1/score", response_model=ScoreResponse, include_in_schema=False)
async def score(body: ScoreRequest, request: Request):
    def spec(scorer: Scorer):
        pipeline.check_model(body.model, scorer)
        return body.job_spec([it.encoder_kwargs() for it in body.items], "items")

    def render(scorer: Scorer, job: ScoreJob, outcomes: list[Outcome]) -> ScoreResponse:
        return ScoreResponse(
            model=scorer.model_name,
            alpha=scorer.info.alpha,
            system_fingerprint=scorer.system_fingerprint,
            aggregation=body.aggregation,
            results=[item_result(i, o) for i, o in enumerate(outcomes)],
            usage=usage(job),
        )

    return await pipeline.respond(request, spec, render)


@router.post("/compare", response_model=CompareResponse, summary="Rank N responses to one prompt")
@router.post("/v1/compare", response_model=CompareResponse, include_in_schema=False)
async def compare(body: CompareRequest, request: Request):
    param = "responses" if body.responses is not None else "responses_ids"

    def spec(scorer: Scorer):
        pipeline.check_model(body.model, scorer)
        prompt = body.prompt_kwargs()
        if body.contrast:  # the prompt is shared: its error names it (system, messages), not each response
            contrast.check_item(prompt)
        return body.job_spec([{**prompt, **r} for r in body.response_kwargs()], param)

    def render(scorer: Scorer, job: ScoreJob, outcomes: list[Outcome]) -> CompareResponse:
        scored = [i for i, o in enumerate(outcomes) if isinstance(o, ScoredItem)]
        scores = [o.score if isinstance(o, ScoredItem) else None for o in outcomes]
        got = [o.score for o in outcomes if isinstance(o, ScoredItem)]
        order = [scored[k] for k in rewards.ranking(got)] if got else []
        probs: list[list[float | None]] = [[None] * len(outcomes) for _ in outcomes]
        if got:
            P = rewards.preference_probabilities(got)
            for a, i in enumerate(scored):
                for b, j in enumerate(scored):
                    probs[i][j] = float(P[a, b])
        return CompareResponse(
            model=scorer.model_name,
            alpha=scorer.info.alpha,
            system_fingerprint=scorer.system_fingerprint,
            aggregation=body.aggregation,
            scores=scores,
            ranking=order,
            best=order[0] if order else None,
            failed=[i for i, o in enumerate(outcomes) if not isinstance(o, ScoredItem)],
            probabilities=probs,
            results=[item_result(i, o) for i, o in enumerate(outcomes)],
            usage=usage(job),
        )

    return await pipeline.respond(request, spec, render)
