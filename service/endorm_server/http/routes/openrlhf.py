"""``POST /get_reward``: OpenRLHF's remote reward-model protocol on the /score pipeline.

OpenRLHF (``openrlhf/utils/remote_rm_utils.py``: ``request_api_wrapper(url, {"query", "prompts",
"labels"})``) sends ``query[i]``, the full decoded sequence (prompt + response, special tokens
kept), and ``prompts[i]``, its prompt text, so the response is ``query[i][len(prompts[i]):]``;
without ``prompts`` the split is the chat template's (``inputs/chat_split.py``). The answer is
``{"rewards", "scores", "extra_logs"}`` (OpenRLHF's ``update_samples_with_rewards``). Scoring
options come from the URL's query string (``/get_reward?aggregation=mean``): OpenRLHF only lets
you configure the URL.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictStr, ValidationError

from endorm_server.http import pipeline
from endorm_server.http.auth import KeyedRoute
from endorm_server.http.errors import APIError
from endorm_server.http.schemas import Aggregation, RequestOptions, Terminal
from endorm_server.inputs.chat_split import chat_boundaries, split_text

router = APIRouter(route_class=KeyedRoute, responses=pipeline.ERROR_RESPONSES, tags=["trainer integrations"])


_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _query_bool(value: object) -> object:
    """Exactly ``true`` or ``false``: as strict as a JSON boolean (no "1", "yes", "on")."""
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


def _query_number(value: object) -> object:
    """A plain decimal number, as JSON writes one (no "inf", "nan", "1_0", " 1")."""
    return float(value) if isinstance(value, str) and _NUMBER.fullmatch(value) else value


QueryBool = Annotated[StrictBool, BeforeValidator(_query_bool)]
QueryFloat = Annotated[StrictFloat, BeforeValidator(_query_number)]


class GetRewardOptions(BaseModel):
    """Query-string options of /get_reward (OpenRLHF configures only the URL), as strict as /score's body."""

    model_config = ConfigDict(extra="forbid")
    aggregation: Aggregation = "sum"
    gamma: QueryFloat = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    beta: QueryFloat = Field(0.0, ge=0, allow_inf_nan=False)
    terminal: Terminal = "zero"
    truncate: QueryBool = False
    add_eos: QueryBool = Field(
        False, description="Append EOS to the response (the query already holds what was generated)"
    )
    step_separator: StrictStr | None = Field(
        None,
        min_length=1,
        description="Score responses as steps split after this "
        "text (for step_min / step_last); a response without it is one step",
    )


class GetRewardRequest(BaseModel):
    # OpenRLHF variants send more fields (metadata, ...): accepted and ignored.
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "query": ["<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>"],
                    "prompts": ["<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"],
                    "labels": ["5"],
                }
            ]
        },
    )
    query: list[StrictStr] = Field(description="Full decoded sequences: prompt + response")
    prompts: list[StrictStr] | None = Field(None, description="Prompt text of each query (the split point)")
    labels: list[Any] | None = Field(None, description="Ignored: the endogenous reward needs no label")


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]
    system_fingerprint: str | None = None  # an extra field; OpenRLHF reads only the three above


def _query_options(request: Request) -> GetRewardOptions:
    repeated = sorted({k for k in request.query_params if len(request.query_params.getlist(k)) > 1})
    if repeated:
        raise APIError(422, f"query string: {repeated[0]} given more than once", param=repeated[0])
    try:
        return GetRewardOptions.model_validate(dict(request.query_params))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise APIError(422, f"query string: {param}: {first.get('msg')}", param=param) from None


def _split_query(query: str, prompt: str, bos: str | None, i: int) -> dict:
    if query.startswith(prompt):
        return {"prompt": prompt, "response": query[len(prompt) :]}
    if bos:  # a BOS on one side only (decoded with special tokens vs the dataset's text)
        q = query[len(bos) :] if query.startswith(bos) else query
        p = prompt[len(bos) :] if prompt.startswith(bos) else prompt
        if q.startswith(p):
            return {"prompt": prompt, "response": q[len(p) :]}
    raise APIError(422, f"query[{i}] does not start with prompts[{i}]", param=f"query.{i}")


@router.post(
    "/get_reward",
    response_model=GetRewardResponse,
    summary="OpenRLHF remote reward model: rewards for decoded prompt+response texts",
)
async def get_reward(body: GetRewardRequest, request: Request):
    """Options go in the query string: ``aggregation``, ``gamma``, ``beta``, ``terminal``,
    ``truncate``, ``add_eos`` (default false: the query holds exactly what was generated)."""
    opts = _query_options(request)
    state = pipeline.service_state(request)
    scorer = pipeline.ready_scorer(state, request)
    options = pipeline.score_options(
        RequestOptions(
            aggregation=opts.aggregation,
            gamma=opts.gamma,
            beta=opts.beta,
            terminal=opts.terminal,
            truncate=opts.truncate,
        ),
        scorer,
    )
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise APIError(422, f"{len(body.prompts)} prompts for {len(body.query)} queries", param="prompts")
    pipeline.check_item_count(state, len(body.query), "query")
    if not body.query:  # OpenRLHF splits a batch over its servers: a server can get an empty slice
        return GetRewardResponse(rewards=[], scores=[], extra_logs={}, system_fingerprint=scorer.system_fingerprint)
    if body.prompts is not None:
        items = [
            _split_query(q, p, scorer.encoder.bos_token, i) for i, (q, p) in enumerate(zip(body.query, body.prompts))
        ]
    else:
        t = chat_boundaries(scorer.encoder)
        items = [split_text(t, q, f"query.{i}") for i, q in enumerate(body.query)]
    if opts.step_separator is not None:  # lenient: a policy's sample must not fail the batch
        from endorm_server.scoring.steps import split_on_separator

        items = [
            {k: v for k, v in it.items() if k != "response"}
            | {"steps": split_on_separator(it["response"], opts.step_separator, required=False)}
            if it.get("response")
            else it
            for it in items
        ]
    pairs, dropped = await pipeline.encode(scorer, items, options, opts.add_eos, "query")
    scored = await pipeline.score_pairs(request, state, scorer, pairs, options)
    if scored is None:
        return Response(status_code=499)
    scores = [s.score for s in scored]
    return GetRewardResponse(
        rewards=scores,
        scores=scores,
        system_fingerprint=scorer.system_fingerprint,
        extra_logs={
            "endorm_response_tokens": [float(s.num_tokens) for s in scored],
            "endorm_truncated_tokens": [float(d) for d in dropped],
        },
    )
