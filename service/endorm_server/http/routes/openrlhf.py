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
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictStr, ValidationError

from endorm_server.core.job import ItemErrors, JobSpec, ScoreJob
from endorm_server.core.scorer import Scorer
from endorm_server.errors import RequestError
from endorm_server.http import pipeline
from endorm_server.http.auth import KeyedRoute
from endorm_server.http.schemas import Aggregation, ErrorBody, Terminal
from endorm_server.inputs.chat_split import chat_boundaries, split_text
from endorm_server.inputs.step_spans import split_on_separator
from endorm_server.scoring.results import ItemFailure, Outcome, ScoredItem, ScoreOptions

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
    item_errors: ItemErrors = Field(
        "reject", description="report: a bad query gets a null reward and an entry in errors; the rest are scored"
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


class GetRewardError(ErrorBody):
    index: int


class GetRewardResponse(BaseModel):
    rewards: list[float | None]
    scores: list[float | None]
    extra_logs: dict[str, list[float]]
    system_fingerprint: str | None = None  # extra fields; OpenRLHF reads only the three above
    errors: list[GetRewardError] = []


def _query_options(request: Request) -> GetRewardOptions:
    repeated = sorted({k for k in request.query_params if len(request.query_params.getlist(k)) > 1})
    if repeated:
        raise RequestError(f"query string: {repeated[0]} given more than once", repeated[0])
    try:
        return GetRewardOptions.model_validate(dict(request.query_params))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise RequestError(f"query string: {param}: {first.get('msg')}", param) from None


def _split_query(query: str, prompt: str, bos: str | None, i: int) -> dict:
    if query.startswith(prompt):
        return {"prompt": prompt, "response": query[len(prompt) :]}
    if bos:  # a BOS on one side only (decoded with special tokens vs the dataset's text)
        q = query[len(bos) :] if query.startswith(bos) else query
        p = prompt[len(bos) :] if prompt.startswith(bos) else prompt
        if q.startswith(p):
            return {"prompt": prompt, "response": q[len(p) :]}
    raise RequestError(f"query[{i}] does not start with prompts[{i}]", f"query.{i}")


@router.post(
    "/get_reward",
    response_model=GetRewardResponse,
    summary="OpenRLHF remote reward model: rewards for decoded prompt+response texts",
)
async def get_reward(body: GetRewardRequest, request: Request):
    """Options go in the query string: ``aggregation``, ``gamma``, ``beta``, ``terminal``,
    ``truncate``, ``add_eos`` (default false: the query holds exactly what was generated)."""
    opts = _query_options(request)
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise RequestError(f"{len(body.prompts)} prompts for {len(body.query)} queries", "prompts")

    def spec(scorer: Scorer) -> JobSpec:
        options = ScoreOptions(
            aggregation=opts.aggregation,
            gamma=opts.gamma,
            beta=opts.beta,
            terminal=opts.terminal,
            truncate=opts.truncate,
        )
        return JobSpec(
            items=_items(body, opts, scorer),
            options=options,
            param="query",
            add_eos=opts.add_eos,
            item_errors=opts.item_errors,
        )

    def render(scorer: Scorer, job: ScoreJob, outcomes: list[Outcome]) -> GetRewardResponse:
        scores = [o.score if isinstance(o, ScoredItem) else None for o in outcomes]
        return GetRewardResponse(
            rewards=scores,
            scores=scores,
            system_fingerprint=scorer.system_fingerprint,
            extra_logs={}
            if not outcomes
            else {
                "endorm_response_tokens": [float(o.num_tokens) if isinstance(o, ScoredItem) else 0.0 for o in outcomes],
                "endorm_truncated_tokens": [
                    float(o.truncated_tokens) if isinstance(o, ScoredItem) else 0.0 for o in outcomes
                ],
            },
            errors=[GetRewardError(index=o.index, **o.error.body()) for o in outcomes if isinstance(o, ItemFailure)],
        )

    return await pipeline.respond(request, spec, render)


def _items(body: GetRewardRequest, opts: GetRewardOptions, scorer: Scorer) -> list[dict | RequestError]:
    """Each query -> a score item: split at its prompt (or the chat template), steps if asked."""
    bos = scorer.encoder.bos_token
    t = chat_boundaries(scorer.encoder) if body.prompts is None else None
    items: list[dict | RequestError] = []
    for i, q in enumerate(body.query):
        try:
            it = (
                _split_query(q, body.prompts[i], bos, i) if body.prompts is not None else split_text(t, q, f"query.{i}")
            )
        except RequestError as exc:  # its own outcome: with item_errors=report the others are scored
            items.append(exc)
            continue
        if opts.step_separator is not None and it.get("response"):  # lenient: a sample must not fail the batch
            steps = split_on_separator(it["response"], opts.step_separator, required=False)
            it = {k: v for k, v in it.items() if k != "response"} | {"steps": steps}
        items.append(it)
    return items
