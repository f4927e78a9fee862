"""Routes that score nothing: the model card, liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from endorm_server.http import pipeline
from endorm_server.http.auth import KeyedRoute
from endorm_server.http.schemas import ModelCard, ModelList, Status

open_router = APIRouter()
keyed_router = APIRouter(route_class=KeyedRoute, responses=pipeline.ERROR_RESPONSES)


@keyed_router.get("/v1/models", response_model=ModelList, summary="The served model")
async def models(request: Request):
    scorer = pipeline.ready_scorer(request)
    info = scorer.info
    receipt = getattr(scorer.engine, "determinism", None)  # vLLM engines: engine/batch_invariant.py
    return ModelList(
        data=[
            ModelCard(
                id=scorer.model_name,
                max_model_len=info.max_model_len,
                alpha=info.alpha,
                engine=info.name,
                vocab_size=info.vocab_size,
                dtype=info.dtype,
                system_fingerprint=scorer.system_fingerprint,
                batch_invariant=bool(receipt and receipt.batch_invariant),
                determinism=receipt.as_dict() if receipt else None,
                fingerprint_inputs=getattr(scorer, "fingerprint_inputs", None),
            )
        ]
    )


@open_router.get("/health", response_model=Status, summary="Process alive")
async def health():
    return Status(status="ok")


@open_router.get(
    "/ready", response_model=Status, responses={503: {"model": Status}}, summary="Model warm and not draining"
)
async def ready(request: Request):
    state = pipeline.service_state(request)
    state.refresh_gauges()
    if state.ready:
        return Status(status="ready")
    status = "draining" if state.draining else ("failed" if state.startup_error else "loading")
    if state.engine_dead:
        status = "engine_dead"
    return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": str(state.settings.retry_after_s)})


@open_router.get("/metrics", summary="Prometheus metrics (service and vLLM)", response_class=Response)
async def metrics(request: Request):
    state = pipeline.service_state(request)
    state.refresh_gauges()
    body = generate_latest(state.metrics.registry) + generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
