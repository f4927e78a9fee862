"""The one call every scoring route makes: readiness, model, item limit, the job, the counters, the answer.

A route maps its body to a JobSpec and its outcomes to its response model; ``respond`` does the rest,
so every route admits, times out, drains, counts and renders the same way:

    route -> respond -> ScoreJob.plan -> ScoreJob.run (admission, engine, reward math) -> render
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from endorm_server.core.admission import Draining
from endorm_server.core.job import JobSpec, ScoreJob
from endorm_server.core.scorer import Scorer
from endorm_server.errors import RequestError
from endorm_server.http.cancellation import ClientDisconnected, run_bounded
from endorm_server.http.schemas import ErrorResponse
from endorm_server.http.state import ServiceState
from endorm_server.scoring.results import ItemFailure, Outcome, ScoredItem

# The error statuses a scoring route documents (all share the ErrorResponse shape).
ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 429, 500, 503, 504)
}

Render = Callable[[Scorer, ScoreJob, list[Outcome]], BaseModel]


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def ready_scorer(request: Request) -> Scorer:
    """The scorer, or 503: draining (for requests that arrived after SIGTERM), loading, or engine down."""
    state = service_state(request)
    retry = state.settings.retry_after_s
    if state.turns_away(request.state.arrived_at):
        raise Draining(retry_after_s=retry)
    if state.scorer is None or not state.scorer.engine.healthy:
        raise RequestError(
            "model is loading or the engine is down",
            status=503,
            code="not_ready",
            headers={"Retry-After": str(retry)},
        )
    return state.scorer


def check_model(model: str | None, scorer: Scorer) -> None:
    if model is not None and model != scorer.model_name:
        raise RequestError(
            f"model {model!r} is not served here (serving {scorer.model_name!r})",
            "model",
            status=404,
            code="model_not_found",
        )


async def respond(request: Request, spec_of: Callable[[Scorer], JobSpec], render: Render) -> Response:
    """Score the request ``spec_of(scorer)`` describes and answer ``render(...)`` as JSON.

    ``spec_of`` runs in the front-end pool (routes that split texts tokenize there). A client that
    went away gets 499 (nobody is listening); its engine work is cancelled.
    """
    state = service_state(request)
    scorer = ready_scorer(request)
    spec = await scorer.off_loop(spec_of, scorer)
    n = len(spec.items) * (2 if spec.contrast else 1)
    limit = state.settings.max_items_per_request
    if n > limit:
        raise RequestError(
            f"{n} sequences in one request, over the limit of {limit}",
            spec.param,
            status=413,
            code="too_many_items",
        )
    job = await ScoreJob.plan(scorer, spec)
    exempt = not state.turns_away(request.state.arrived_at)
    try:
        outcomes = await run_bounded(request, job.run(exempt_from_drain=exempt), state.settings.request_timeout_s)
    except ClientDisconnected:
        state.metrics.errors.labels("client_disconnected").inc()
        return Response(status_code=499)
    _count(state, job, outcomes)
    body = await scorer.off_loop(lambda: render(scorer, job, outcomes).model_dump_json().encode())
    return Response(body, media_type="application/json")


def _count(state: ServiceState, job: ScoreJob, outcomes: list[Outcome]) -> None:
    m = state.metrics
    m.admission_wait.observe(job.waited_s)
    m.items_per_request.observe(len(outcomes))
    m.sequences.inc(len(job.units))
    m.tokens.labels("prompt").inc(sum(len(u.prompt_ids) for u in job.units))
    m.tokens.labels("response").inc(sum(len(u.response_ids) for u in job.units))
    for o in outcomes:
        if isinstance(o, ItemFailure):
            m.item_errors.labels(o.error.code).inc()


def scored_only(outcomes: list[Outcome]) -> list[ScoredItem]:
    """The outcomes of a job run with ``item_errors="reject"``: every one scored."""
    return [o for o in outcomes if isinstance(o, ScoredItem)]
