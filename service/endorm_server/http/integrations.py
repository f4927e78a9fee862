"""Trainer protocols on top of the /score pipeline.

* ``POST /get_reward`` speaks OpenRLHF's remote reward-model protocol
  (``openrlhf/utils/remote_rm_utils.py``: ``request_api_wrapper(url, {"query", "prompts",
  "labels"})``): ``query[i]`` is the full decoded sequence (prompt + response, special tokens
  kept), ``prompts[i]`` its prompt text, so the response is ``query[i][len(prompts[i]):]``.
  The answer is ``{"rewards", "scores", "extra_logs"}`` (OpenRLHF's
  ``update_samples_with_rewards``). Scoring options come from the URL's query string
  (``/get_reward?aggregation=mean``): OpenRLHF only lets you configure the URL.
* ``POST /classify`` is vLLM's classification API as verl's reward loop calls it
  (``{"model", "input", "activation": false}``, reads ``data[-1].probs[-1]``), answered in
  vLLM's ``ClassificationResponse`` shape with one class: the sequence's reward.

Both map their inputs to ``/score`` items and run the same steps as ``/score``
(``_ready_scorer``, ``_options``, ``_check_items``, ``_encode_all``, ``_score_pairs``).

Splitting a full text into prompt and response (``/classify`` text or token input, and
``/get_reward`` without ``prompts``) uses the served model's chat template: the response
starts after the LAST assistant header (the text the template adds for
``add_generation_prompt=True``), and a trailing end-of-assistant-turn suffix (e.g.
``<|im_end|>\\n``) is cut to the end-of-turn token alone, so a templated conversation
scores exactly like ``/score`` with ``messages`` + ``response``. A leading BOS that the
template writes but the caller stripped (verl does) is restored.
"""

from __future__ import annotations

import math
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from endorm_server.http.auth import require_api_key
from endorm_server.http.errors import APIError
from endorm_server.http.routes import _ERRORS, _check_items, _encode_all, _options, _ready_scorer, _score_pairs, _state
from endorm_server.http.schemas import Aggregation, ErrorResponse, Message, ScoringOptions, Terminal
from endorm_server.scoring.scorer import Scorer
from endorm_server.inputs.tokenization import PairEncoder

router = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS, tags=["trainer integrations"])


# ---------------------------------------------------------------- chat-template split


@dataclass(frozen=True)
class _Template:
    header: str  # what the template writes before an assistant reply
    suffix: str  # what it writes after one
    eot_text: str  # the end-of-turn token's text ("" if none)
    eot_id: int | None
    bos: str  # the BOS text the template writes at the start ("" if none)
    header_ids: list[int]
    suffix_ids: list[int]


_TEMPLATES: "weakref.WeakKeyDictionary[PairEncoder, _Template | None]" = weakref.WeakKeyDictionary()
_A, _B = "ENDORMPROBEUSER", "ENDORMPROBEREPLY"


def _template(encoder: PairEncoder) -> _Template | None:
    if encoder not in _TEMPLATES:
        _TEMPLATES[encoder] = _probe(encoder)
    return _TEMPLATES[encoder]


def _probe(encoder: PairEncoder) -> _Template | None:
    tok = encoder.tokenizer
    if not encoder.has_chat_template:
        return None
    user = [{"role": "user", "content": _A}]
    try:
        gen = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        nogen = tok.apply_chat_template(user, add_generation_prompt=False, tokenize=False)
        full = tok.apply_chat_template([*user, {"role": "assistant", "content": _B}], tokenize=False)
    except Exception:
        return None
    if not (isinstance(gen, str) and isinstance(nogen, str) and isinstance(full, str)):
        return None
    if not gen.startswith(nogen) or len(gen) == len(nogen) or _B not in full:
        return None
    header = gen[len(nogen):]
    suffix = full[full.rindex(_B) + len(_B):]
    eot_id = encoder.chat_eot_id
    eot_text = tok.decode([eot_id], skip_special_tokens=False) if eot_id is not None else ""
    bos = encoder.bos_token if encoder.bos_token and gen.startswith(encoder.bos_token) else ""
    enc = lambda s: list(tok.encode(s, add_special_tokens=False)) if s else []  # noqa: E731
    return _Template(header=header, suffix=suffix, eot_text=eot_text, eot_id=eot_id, bos=bos,
                     header_ids=enc(header), suffix_ids=enc(suffix))


def _no_turn(param: str, why: str) -> APIError:
    return APIError(422, f"cannot split {param} into prompt and response: {why}", param=param)


def _split_text(t: _Template | None, text: str, param: str) -> dict:
    """Full templated text -> {"prompt", "response"} (raw-text rules, response ends with the EOT token)."""
    if t is None:
        raise _no_turn(param, "the model has no usable chat template (give prompt and response separately)")
    at = text.rfind(t.header)
    if at < 0:
        raise _no_turn(param, f"no assistant turn (the chat template's {t.header!r}) in the text")
    prompt, response = text[: at + len(t.header)], text[at + len(t.header):]
    if t.suffix and response.endswith(t.suffix):
        response = response[: -len(t.suffix)] + (t.eot_text if t.suffix.startswith(t.eot_text) else "")
    if t.bos and not prompt.startswith(t.bos):
        prompt = t.bos + prompt  # callers strip the BOS the template writes (verl does); put it back
    return {"prompt": prompt, "response": response}


def _split_ids(t: _Template | None, ids: list[int], param: str) -> dict:
    if t is None or not t.header_ids:
        raise _no_turn(param, "the model has no usable chat template (use /score with prompt_ids and response_ids)")
    h = t.header_ids
    at = next((i for i in range(len(ids) - len(h), -1, -1) if ids[i: i + len(h)] == h), -1)
    if at < 0:
        raise _no_turn(param, "no assistant header tokens of the chat template in the ids")
    prompt, response = ids[: at + len(h)], ids[at + len(h):]
    s = t.suffix_ids
    if s and len(response) >= len(s) and response[-len(s):] == s:
        response = response[: -len(s)] + ([t.eot_id] if t.eot_id is not None and s[0] == t.eot_id else [])
    return {"prompt_ids": prompt, "response_ids": response}


def _messages_item(messages: list[Message], param: str) -> dict:
    if messages[-1].role != "assistant":
        raise APIError(422, "the last message must be the assistant turn to score", param=param)
    return {"messages": [m.model_dump() for m in messages[:-1]], "response": messages[-1].content}


# ---------------------------------------------------------------- OpenRLHF: /get_reward


class GetRewardOptions(BaseModel):
    """Query-string options of /get_reward (OpenRLHF configures only the URL)."""

    model_config = ConfigDict(extra="forbid")
    aggregation: Aggregation = "sum"
    gamma: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    beta: float = Field(0.0, ge=0, allow_inf_nan=False)
    terminal: Terminal = "zero"
    truncate: bool = False
    add_eos: bool = Field(False, description="Append EOS to the response (the query already holds what was generated)")
    step_separator: str | None = Field(None, min_length=1, description="Score responses as steps split after this "
                                       "text (for step_min / step_last); a response without it is one step")


class GetRewardRequest(BaseModel):
    # OpenRLHF variants send more fields (metadata, ...): accepted and ignored.
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "query": ["<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>"],
        "prompts": ["<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"],
        "labels": ["5"],
    }]})
    query: list[StrictStr] = Field(description="Full decoded sequences: prompt + response")
    prompts: list[StrictStr] | None = Field(None, description="Prompt text of each query (the split point)")
    labels: list[Any] | None = Field(None, description="Ignored: the endogenous reward needs no label")


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]
    system_fingerprint: str | None = None  # an extra field; OpenRLHF reads only the three above


def _query_options(request: Request) -> GetRewardOptions:
    try:
        return GetRewardOptions.model_validate(dict(request.query_params))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise APIError(422, f"query string: {param}: {first.get('msg')}", param=param) from None


def _split_query(query: str, prompt: str, bos: str | None, i: int) -> dict:
    if query.startswith(prompt):
        return {"prompt": prompt, "response": query[len(prompt):]}
    if bos:  # a BOS on one side only (decoded with special tokens vs the dataset's text)
        q = query[len(bos):] if query.startswith(bos) else query
        p = prompt[len(bos):] if prompt.startswith(bos) else prompt
        if q.startswith(p):
            return {"prompt": prompt, "response": q[len(p):]}
    raise APIError(422, f"query[{i}] does not start with prompts[{i}]", param=f"query.{i}")


@router.post("/get_reward", response_model=GetRewardResponse,
             summary="OpenRLHF remote reward model: rewards for decoded prompt+response texts")
async def get_reward(body: GetRewardRequest, request: Request):
    """Options go in the query string: ``aggregation``, ``gamma``, ``beta``, ``terminal``,
    ``truncate``, ``add_eos`` (default false: the query holds exactly what was generated)."""
    opts = _query_options(request)
    state = _state(request)
    scorer = _ready_scorer(state, request)
    options = _options(ScoringOptions(aggregation=opts.aggregation, gamma=opts.gamma, beta=opts.beta,
                                      terminal=opts.terminal, truncate=opts.truncate), scorer)
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise APIError(422, f"{len(body.prompts)} prompts for {len(body.query)} queries", param="prompts")
    _check_items(state, len(body.query), "query")
    if not body.query:  # OpenRLHF splits a batch over its servers: a server can get an empty slice
        return GetRewardResponse(rewards=[], scores=[], extra_logs={}, system_fingerprint=scorer.system_fingerprint)
    if body.prompts is not None:
        items = [_split_query(q, p, scorer.encoder.bos_token, i) for i, (q, p) in enumerate(zip(body.query, body.prompts))]
    else:
        t = _template(scorer.encoder)
        items = [_split_text(t, q, f"query.{i}") for i, q in enumerate(body.query)]
    if opts.step_separator is not None:  # lenient: a policy's sample must not fail the batch
        from endorm_server.scoring.steps import split_on_separator

        items = [{k: v for k, v in it.items() if k != "response"}
                 | {"steps": split_on_separator(it["response"], opts.step_separator, required=False)}
                 if it.get("response") else it for it in items]
    pairs, dropped = _encode_all(scorer, items, options, opts.add_eos, "query")
    scored = await _score_pairs(request, state, scorer, pairs, options)
    if not scored:
        return Response(status_code=499)
    scores = [s.score for s in scored]
    return GetRewardResponse(rewards=scores, scores=scores, system_fingerprint=scorer.system_fingerprint, extra_logs={
        "endorm_response_tokens": [float(s.num_tokens) for s in scored],
        "endorm_truncated_tokens": [float(d) for d in dropped],
    })


# ---------------------------------------------------------------- verl / vLLM: /classify


class ClassifyRequest(BaseModel):
    """vLLM's ClassificationRequest (completion form ``input`` or chat form ``messages``),
    plus this service's scoring options. Other vLLM fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "model": "my-model",
        "input": "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n",
        "activation": False,
    }]})
    model: StrictStr | None = None
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] | list[Message] | None = Field(
        None, description="Templated conversation text(s) or token ids (split at the last assistant header), "
                          "or a conversation (list of messages ending with the assistant turn)")
    messages: list[Message] | None = Field(None, min_length=1, description="A conversation ending with the assistant turn")
    activation: bool | None = Field(None, description="verl's name (vLLM < 0.11.2) for use_activation")
    use_activation: bool | None = Field(None, description="Sigmoid of the reward (vLLM default when unset); false: the raw reward")
    aggregation: Aggregation = "sum"
    gamma: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    beta: float = Field(0.0, ge=0, allow_inf_nan=False)
    terminal: Terminal = "zero"
    truncate: bool = False


class ClassificationData(BaseModel):
    index: int
    label: str | None = None
    probs: list[float]
    num_classes: int


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


def _classify_items(body: ClassifyRequest, scorer: Scorer) -> tuple[list[dict], str, bool]:
    """-> (score items, param name, add_eos)."""
    if (body.input is None) == (body.messages is None):
        raise APIError(422, "give exactly one of input, messages", param="input")
    if body.messages is not None:
        return [_messages_item(body.messages, "messages")], "messages", True
    inp = body.input
    if isinstance(inp, str):
        return [_split_text(_template(scorer.encoder), inp, "input")], "input", False
    if not inp:
        raise APIError(422, "input is empty", param="input")
    if isinstance(inp[0], Message):
        return [_messages_item(inp, "input")], "input", True
    t = _template(scorer.encoder)
    if isinstance(inp[0], str):
        return [_split_text(t, x, f"input.{i}") for i, x in enumerate(inp)], "input", False
    if isinstance(inp[0], int):
        return [_split_ids(t, inp, "input")], "input", False
    return [_split_ids(t, x, f"input.{i}") for i, x in enumerate(inp)], "input", False


def _model_ok(model: str | None, scorer: Scorer, configured: str | None) -> bool:
    # verl sends its reward_model.model.path: accept the served name, the --model value,
    # or a path whose last part is the served name.
    return model in (None, scorer.model_name, configured) or model.rstrip("/").rsplit("/", 1)[-1] == scorer.model_name


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@router.post("/classify", response_model=ClassificationResponse, responses={404: {"model": ErrorResponse}},
             summary="vLLM-compatible classification (verl's reward loop): one class, the sequence's reward")
@router.post("/v1/classify", response_model=ClassificationResponse, responses={404: {"model": ErrorResponse}},
             include_in_schema=False)
async def classify(body: ClassifyRequest, request: Request):
    state = _state(request)
    scorer = _ready_scorer(state, request)
    if not _model_ok(body.model, scorer, state.settings.model):
        raise APIError(404, f"model {body.model!r} is not served here (serving {scorer.model_name!r})",
                       param="model", type="model_not_found")
    options = _options(ScoringOptions(aggregation=body.aggregation, gamma=body.gamma, beta=body.beta,
                                      terminal=body.terminal, truncate=body.truncate), scorer)
    items, param, add_eos = _classify_items(body, scorer)
    _check_items(state, len(items), param)
    pairs, _ = _encode_all(scorer, items, options, add_eos, param)
    scored = await _score_pairs(request, state, scorer, pairs, options)
    if not scored:
        return Response(status_code=499)
    activation = body.use_activation if body.use_activation is not None else body.activation
    squash = _sigmoid if activation is None or activation else float
    tokens = sum(len(p.prompt_ids) + len(p.response_ids) for p in pairs)
    return ClassificationResponse(
        id=f"classify-{uuid.uuid4().hex}", created=int(time.time()), model=scorer.model_name,
        data=[ClassificationData(index=i, probs=[squash(s.score)], num_classes=1) for i, s in enumerate(scored)],
        usage=ClassifyUsage(prompt_tokens=tokens, total_tokens=tokens), system_fingerprint=scorer.system_fingerprint,
    )
