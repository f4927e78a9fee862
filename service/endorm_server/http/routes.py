"""The HTTP routes. A /score request flows:

    ScoreRequest (schema) -> Scorer.encode (token ids) -> admission
    -> Scorer.score_pairs (engine + reward math) -> ScoreResponse
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from endorm_server.http.admission import Draining
from endorm_server.http.auth import require_api_key
from endorm_server.http.cancellation import ClientDisconnected, run_bounded
from endorm_server.http.errors import APIError
from endorm_server.http.schemas import (
    CompareRequest,
    CompareResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    ScoringOptions,
    Status,
    StepResult,
    TokenReward,
    Usage,
)
from endorm_server.http.state import ServiceState
from endorm_server.scoring.scorer import ScoredItem, Scorer, ScoreOptions
from endorm_server.inputs.tokenization import EncodedPair

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 503, 504)}

open_router = APIRouter()
scoring_router = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _ready_scorer(state: ServiceState, request: Request) -> Scorer:
    if state.turns_away(request.state.arrived_at):
        raise Draining("server is draining")
    if state.scorer is None or not state.scorer.engine.healthy:
        raise APIError(503, "model is loading or the engine is down", type="not_ready",
                       headers={"Retry-After": str(state.settings.retry_after_s)})
    return state.scorer


def _options(body: ScoringOptions, scorer: Scorer) -> ScoreOptions:
    if body.model is not None and body.model != scorer.model_name:
        raise APIError(404, f"model {body.model!r} is not served here (serving {scorer.model_name!r})",
                       param="model", type="model_not_found")
    return ScoreOptions(aggregation=body.aggregation, gamma=body.gamma, beta=body.beta, terminal=body.terminal,
                        return_tokens=body.return_tokens, truncate=body.truncate)


def _check_items(state: ServiceState, n: int, param: str) -> None:
    limit = state.settings.max_items_per_request
    if n > limit:
        raise APIError(413, f"{n} sequences in one request, over the limit of {limit}", param=param,
                       type="too_many_items")


async def _score_pairs(request: Request, state: ServiceState, scorer: Scorer, pairs: list[EncodedPair],
                       options: ScoreOptions) -> list[ScoredItem]:
    """Admission, then all pairs to the engine at once, bounded by disconnect and deadline."""
    tokens = sum(len(p.prompt_ids) + len(p.response_ids) for p in pairs)
    request.state.items, request.state.tokens = len(pairs), tokens
    metrics = state.metrics

    async def admitted() -> list[ScoredItem]:
        exempt = not state.turns_away(request.state.arrived_at)
        async with state.admission.admit(tokens, exempt_from_drain=exempt) as waited:
            metrics.admission_wait.observe(waited)
            state.refresh_gauges()
            try:
                return await scorer.score_pairs(pairs, options)
            finally:
                state.refresh_gauges()

    try:
        scored = await run_bounded(request, admitted(), state.settings.request_timeout_s)
    except ClientDisconnected:
        metrics.rejections.labels("client_disconnected").inc()
        return []  # nobody is listening; the response is dropped by the server
    except APIError as exc:
        if exc.status == 504:
            metrics.rejections.labels("deadline").inc()
        raise
    except Exception as exc:  # Overloaded / Draining are mapped by the error handlers
        reason = getattr(exc, "reason", None) or type(exc).__name__.lower()
        metrics.rejections.labels(reason).inc()
        raise
    metrics.items_per_request.observe(len(pairs))
    metrics.sequences.inc(len(pairs))
    metrics.tokens.labels("prompt").inc(sum(len(p.prompt_ids) for p in pairs))
    metrics.tokens.labels("response").inc(sum(len(p.response_ids) for p in pairs))
    return scored


def _result(index: int, item: ScoredItem, dropped: int) -> ScoreResult:
    tokens = None
    if item.token_texts is not None:
        tr = item.token_rewards
        offsets = item.token_offsets or [None] * len(item.token_texts)
        tokens = [
            TokenReward(id=int(t), text=text, reward=float(r), logprob=float(lp), offset=off)
            for t, text, r, lp, off in zip(item.pair.response_ids, item.token_texts, tr.rewards, tr.logprobs, offsets)
        ]
    steps = None
    if item.steps is not None:
        steps = [StepResult(start=s.start, end=s.end, num_tokens=s.num_tokens, reward=s.reward, logprob=s.logprob,
                            text=s.text) for s in item.steps]
    return ScoreResult(index=index, score=item.score, num_tokens=item.num_tokens,
                       prompt_tokens=len(item.pair.prompt_ids), truncated_tokens=dropped, tokens=tokens, steps=steps)


def _usage(pairs: list[EncodedPair]) -> Usage:
    prompt = sum(len(p.prompt_ids) for p in pairs)
    return Usage(prompt_tokens=prompt, total_tokens=prompt + sum(len(p.response_ids) for p in pairs))


def _encode_all(scorer: Scorer, kwargs_list: list[dict], options: ScoreOptions, add_eos: bool,
                param: str) -> tuple[list[EncodedPair], list[int]]:
    from endorm_server.inputs.tokenization import InputError

    pairs, dropped = [], []
    for i, kwargs in enumerate(kwargs_list):
        try:
            pair, n = scorer.encode(kwargs, add_eos=add_eos, truncate=options.truncate)
        except InputError as exc:
            exc.param = f"{param}.{i}.{exc.param}" if exc.param else f"{param}.{i}"
            raise
        pairs.append(pair)
        dropped.append(n)
    return pairs, dropped


@scoring_router.post("/score", response_model=ScoreResponse, summary="Endogenous rewards for prompt/response pairs")
@scoring_router.post("/v1/score", response_model=ScoreResponse, include_in_schema=False)
async def score(body: ScoreRequest, request: Request):
    state = _state(request)
    scorer = _ready_scorer(state, request)
    options = _options(body, scorer)
    _check_items(state, len(body.items), "items")
    pairs, dropped = _encode_all(scorer, [it.encoder_kwargs() for it in body.items], options, body.add_eos, "items")
    scored = await _score_pairs(request, state, scorer, pairs, options)
    if not scored:
        return Response(status_code=499)
    return ScoreResponse(
        model=scorer.model_name, alpha=scorer.info.alpha, system_fingerprint=scorer.system_fingerprint,
        aggregation=body.aggregation, results=[_result(i, s, d) for i, (s, d) in enumerate(zip(scored, dropped))], usage=_usage(pairs),
    )


@scoring_router.post("/compare", response_model=CompareResponse, summary="Rank N responses to one prompt")
@scoring_router.post("/v1/compare", response_model=CompareResponse, include_in_schema=False)
async def compare(body: CompareRequest, request: Request):
    from endorm_server.scoring import rewards

    state = _state(request)
    scorer = _ready_scorer(state, request)
    options = _options(body, scorer)
    responses = body.response_kwargs()
    param = "responses" if body.responses is not None else "responses_ids"
    _check_items(state, len(responses), param)
    prompt = body.prompt_kwargs()
    pairs, dropped = _encode_all(scorer, [{**prompt, **r} for r in responses], options, body.add_eos, param)
    scored = await _score_pairs(request, state, scorer, pairs, options)
    if not scored:
        return Response(status_code=499)
    scores = [s.score for s in scored]
    order = rewards.ranking(scores)
    return CompareResponse(
        model=scorer.model_name, alpha=scorer.info.alpha, system_fingerprint=scorer.system_fingerprint,
        aggregation=body.aggregation, scores=scores,
        ranking=order, best=order[0], probabilities=rewards.preference_probabilities(scores).tolist(),
        results=[_result(i, s, d) for i, (s, d) in enumerate(zip(scored, dropped))], usage=_usage(pairs),
    )


@scoring_router.get("/v1/models", response_model=ModelList, summary="The served model")
async def models(request: Request):
    scorer = _ready_scorer(_state(request), request)
    info = scorer.info
    return ModelList(data=[ModelCard(id=scorer.model_name, max_model_len=info.max_model_len, alpha=info.alpha,
                                     engine=info.name, vocab_size=info.vocab_size,
                                     system_fingerprint=scorer.system_fingerprint)])


@open_router.get("/health", response_model=Status, summary="Process alive")
async def health():
    return Status(status="ok")


@open_router.get("/ready", response_model=Status, responses={503: {"model": Status}},
                 summary="Model warm and not draining")
async def ready(request: Request):
    state = _state(request)
    state.refresh_gauges()
    if state.ready:
        return Status(status="ready")
    status = "draining" if state.draining else ("failed" if state.startup_error else "loading")
    if state.engine_dead:
        status = "engine_dead"
    return JSONResponse({"status": status}, status_code=503,
                        headers={"Retry-After": str(state.settings.retry_after_s)})


@open_router.get("/metrics", summary="Prometheus metrics (service and vLLM)", response_class=Response)
async def metrics(request: Request):
    state = _state(request)
    state.refresh_gauges()
    body = generate_latest(state.metrics.registry) + generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
