"""``POST /classify``: vLLM's classification API as verl's reward loop calls it.

verl sends ``{"model", "input", "activation": false}`` and reads ``data[-1].probs[-1]``; the
answer has vLLM's ``ClassificationResponse`` shape with one class: the sequence's reward.
Full-text and token inputs are split into prompt and response by the chat template
(``inputs/chat_split.py``); a message list ends with the assistant turn to score.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_serializer

from endorm_server.core.job import ItemErrors, JobSpec, ScoreJob
from endorm_server.core.scorer import Scorer
from endorm_server.errors import RequestError
from endorm_server.http import pipeline
from endorm_server.http.auth import KeyedRoute
from endorm_server.http.schemas import Aggregation, ErrorBody, ErrorResponse, Message, Terminal
from endorm_server.inputs.chat_split import chat_boundaries, split_ids, split_text
from endorm_server.scoring.results import Outcome, ScoredItem, ScoreOptions

router = APIRouter(route_class=KeyedRoute, responses=pipeline.ERROR_RESPONSES, tags=["trainer integrations"])


def _messages_item(messages: list[Message], param: str) -> dict:
    if messages[-1].role != "assistant":
        raise RequestError("the last message must be the assistant turn to score", param)
    return {"messages": [m.model_dump() for m in messages[:-1]], "response": messages[-1].content}


class ClassifyRequest(BaseModel):
    """vLLM's ClassificationRequest (completion form ``input`` or chat form ``messages``),
    plus this service's scoring options. Other vLLM fields are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "my-model",
                    "input": "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n",
                    "activation": False,
                }
            ]
        },
    )
    model: StrictStr | None = None
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] | list[Message] | None = Field(
        None,
        description="Templated conversation text(s) or token ids (split at the last assistant header), "
        "or a conversation (list of messages ending with the assistant turn)",
    )
    messages: list[Message] | None = Field(
        None, min_length=1, description="A conversation ending with the assistant turn"
    )
    activation: StrictBool | None = Field(None, description="verl's name (vLLM < 0.11.2) for use_activation")
    use_activation: StrictBool | None = Field(
        None, description="Sigmoid of the reward (vLLM default when unset); false: the raw reward"
    )
    aggregation: Aggregation = "sum"
    gamma: StrictFloat = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    beta: StrictFloat = Field(0.0, ge=0, allow_inf_nan=False)
    terminal: Terminal = "zero"
    truncate: StrictBool = False
    item_errors: ItemErrors = Field(
        "reject", description="report: a bad input gets probs [] and an error in its place; the rest are scored"
    )


class ClassificationData(BaseModel):
    index: int
    label: str | None = None
    probs: list[float]
    num_classes: int
    error: ErrorBody | None = None  # item_errors: report, an input that could not be scored

    @model_serializer(mode="wrap")
    def _vllm_shape(self, handler):  # vLLM's shape exactly unless the item failed
        out = handler(self)
        if out.get("error") is None:
            out.pop("error", None)
        return out


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class ClassificationResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ClassifyUsage
    system_fingerprint: str | None = None  # an extra field beside vLLM's shape


def _each(split: Callable[[Any, str], dict], inputs: list, param: str) -> list[dict | RequestError]:
    """One item per input; an input that cannot be split is its own outcome (item_errors: report)."""
    out: list[dict | RequestError] = []
    for i, x in enumerate(inputs):
        try:
            out.append(split(x, f"{param}.{i}"))
        except RequestError as exc:
            out.append(exc)
    return out


def _classify_items(body: ClassifyRequest, scorer: Scorer) -> tuple[list[dict | RequestError], str, bool]:
    """-> (score items, param name, add_eos)."""
    if (body.input is None) == (body.messages is None):
        raise RequestError("give exactly one of input, messages", "input")
    if body.messages is not None:
        return [_messages_item(body.messages, "messages")], "messages", True
    inp = body.input
    if isinstance(inp, str):
        return [split_text(chat_boundaries(scorer.encoder), inp, "input")], "input", False
    if not inp:
        raise RequestError("input is empty", "input")
    if isinstance(inp[0], Message):
        return [_messages_item(inp, "input")], "input", True
    t = chat_boundaries(scorer.encoder)
    if isinstance(inp[0], str):
        return _each(lambda x, p: split_text(t, x, p), inp, "input"), "input", False
    if isinstance(inp[0], int):
        return [split_ids(t, inp, "input")], "input", False
    return _each(lambda x, p: split_ids(t, x, p), inp, "input"), "input", False


def _model_ok(model: str | None, scorer: Scorer, configured: str | None) -> bool:
    # verl sends its reward_model.model.path: accept the served name, the --model value,
    # or a path whose last part is the served name.
    return model in (None, scorer.model_name, configured) or model.rstrip("/").rsplit("/", 1)[-1] == scorer.model_name


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@router.post(
    "/classify",
    response_model=ClassificationResponse,
    responses={404: {"model": ErrorResponse}},
    summary="vLLM-compatible classification (verl's reward loop): one class, the sequence's reward",
)
@router.post(
    "/v1/classify",
    response_model=ClassificationResponse,
    responses={404: {"model": ErrorResponse}},
    include_in_schema=False,
)
async def classify(body: ClassifyRequest, request: Request):
    configured = pipeline.service_state(request).settings.model

    def spec(scorer: Scorer) -> JobSpec:
        if not _model_ok(body.model, scorer, configured):
            raise RequestError(
                f"model {body.model!r} is not served here (serving {scorer.model_name!r})",
                "model",
                status=404,
                code="model_not_found",
            )
        options = ScoreOptions(
            aggregation=body.aggregation,
            gamma=body.gamma,
            beta=body.beta,
            terminal=body.terminal,
            truncate=body.truncate,
        )
        items, param, add_eos = _classify_items(body, scorer)
        return JobSpec(items=items, options=options, param=param, add_eos=add_eos, item_errors=body.item_errors)

    activation = body.use_activation if body.use_activation is not None else body.activation
    squash = _sigmoid if activation is None or activation else float

    def data(i: int, o: Outcome) -> ClassificationData:
        if isinstance(o, ScoredItem):
            return ClassificationData(index=i, probs=[squash(o.score)], num_classes=1)
        return ClassificationData(index=i, probs=[], num_classes=1, error=ErrorBody(**o.error.body()))

    def render(scorer: Scorer, job: ScoreJob, outcomes: list[Outcome]) -> ClassificationResponse:
        _, tokens = job.usage()
        return ClassificationResponse(
            id=f"classify-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=scorer.model_name,
            data=[data(i, o) for i, o in enumerate(outcomes)],
            usage=ClassifyUsage(prompt_tokens=tokens, total_tokens=tokens),
            system_fingerprint=scorer.system_fingerprint,
        )

    return await pipeline.respond(request, spec, render)
