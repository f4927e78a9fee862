"""The path every scoring route shares: readiness, options, item limits, encoding,
admission, the engine call, and the counters around it.

A route only maps its body to score items (``/score`` items, OpenRLHF queries, vLLM
classify inputs) and its result to its response shape; everything in between is here,
so every route admits, times out, drains and counts the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from endorm_server.http.admission import Draining
from endorm_server.http.cancellation import ClientDisconnected, run_bounded
from endorm_server.http.errors import APIError
from endorm_server.http.schemas import ErrorResponse, RequestOptions
from endorm_server.http.state import ServiceState
from endorm_server.inputs.tokenization import EncodedPair, InputError
from endorm_server.scoring.scorer import ScoredItem, ScoreOptions, Scorer

# The error statuses a scoring route documents (all share the ErrorResponse shape).
ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 429, 503, 504)
}


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def ready_scorer(state: ServiceState, request: Request) -> Scorer:
    """The scorer, or 503: draining (for requests that arrived after SIGTERM), loading, or engine down."""
    if state.turns_away(request.state.arrived_at):
        raise Draining("server is draining")
    if state.scorer is None or not state.scorer.engine.healthy:
        raise APIError(
            503,
            "model is loading or the engine is down",
            type="not_ready",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        )
    return state.scorer


def score_options(body: RequestOptions, scorer: Scorer) -> ScoreOptions:
    """Request options -> the scorer's options; a request for another model is a 404."""
    if body.model is not None and body.model != scorer.model_name:
        raise APIError(
            404,
            f"model {body.model!r} is not served here (serving {scorer.model_name!r})",
            param="model",
            type="model_not_found",
        )
    return ScoreOptions(
        aggregation=body.aggregation,
        gamma=body.gamma,
        beta=body.beta,
        terminal=body.terminal,
        return_tokens=body.return_tokens,
        truncate=body.truncate,
    )


def check_item_count(state: ServiceState, n: int, param: str) -> None:
    limit = state.settings.max_items_per_request
    if n > limit:
        raise APIError(
            413, f"{n} sequences in one request, over the limit of {limit}", param=param, type="too_many_items"
        )


def encode_items(
    scorer: Scorer, items: list[dict], options: ScoreOptions, add_eos: bool, param: str
) -> tuple[list[EncodedPair], list[int]]:
    """Score items -> exact token ids, and how many prompt tokens truncation dropped from each.

    An input error names the item: ``items.3.response``.
    """
    pairs, dropped = [], []
    for i, kwargs in enumerate(items):
        try:
            pair, n = scorer.encode(kwargs, add_eos=add_eos, truncate=options.truncate)
        except InputError as exc:
            exc.param = f"{param}.{i}.{exc.param}" if exc.param else f"{param}.{i}"
            raise
        pairs.append(pair)
        dropped.append(n)
    return pairs, dropped


async def encode(
    scorer: Scorer, items: list[dict], options: ScoreOptions, add_eos: bool, param: str
) -> tuple[list[EncodedPair], list[int]]:
    """``encode_items`` in the scorer's front-end pool: tokenization and chat templating never block the
    event loop. Each item is tokenized once, here, before admission, which counts these token ids."""
    return await scorer.off_loop(encode_items, scorer, items, options, add_eos, param)


async def render(scorer: Scorer, build: Callable[[], BaseModel]) -> Response:
    """Build the response model (per-token results) and its JSON in the front-end pool, not on the event loop."""
    body = await scorer.off_loop(lambda: build().model_dump_json().encode())
    return Response(body, media_type="application/json")


async def score_pairs(
    request: Request, state: ServiceState, scorer: Scorer, pairs: list[EncodedPair], options: ScoreOptions
) -> list[ScoredItem] | None:
    """Admission, then all pairs to the engine at once, bounded by disconnect and deadline.

    ``None``: the client went away; nobody is listening, so the route answers 499.
    """
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
        return None
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
