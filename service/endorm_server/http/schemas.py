"""Request and response bodies of the HTTP API (the contract clients rely on)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from endorm_server.core.job import ItemErrors, JobSpec
from endorm_server.errors import RequestError
from endorm_server.scoring.aggregations import Aggregation, Terminal
from endorm_server.scoring.results import ScoreOptions

_STRICT = ConfigDict(extra="forbid")

TokenId = Annotated[StrictInt, Field(ge=0)]


def _exactly_one_of(*fields: str) -> dict[str, Any]:
    """JSON-schema form of "exactly one of these fields, not null" (what the validators enforce)."""
    return {"oneOf": [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in fields]}


def _schema_rules(*groups: tuple[str, ...]) -> dict:
    return {"allOf": [_exactly_one_of(*g) for g in groups]}


PROMPT_FORMS = ("prompt", "messages", "prompt_ids")

StepText = Annotated[StrictStr, Field(min_length=1)]
StepEnd = Annotated[StrictInt, Field(ge=1)]


def _not_null(f: str) -> dict[str, Any]:
    return {"required": [f], "properties": {f: {"not": {"type": "null"}}}}


# the response: response_ids, or text given as response and/or steps (service/endorm_server/scoring/steps.py)
_RESPONSE_FORMS: dict[str, Any] = {
    "oneOf": [_not_null("response_ids"), {"anyOf": [_not_null("response"), _not_null("steps")]}]
}


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr


class PromptFields(BaseModel):
    """Exactly one prompt form: chat ``messages``, raw ``prompt`` text or ``prompt_ids``."""

    model_config = _STRICT
    prompt: StrictStr | None = Field(None, description="Raw prompt text (tokenized as is, no chat template)")
    messages: list[Message] | None = Field(
        None, min_length=1, description="Chat turns, rendered with the model's chat template"
    )
    prompt_ids: list[TokenId] | None = Field(None, min_length=1, description="Prompt token ids, used exactly as given")
    system: StrictStr | None = Field(None, description="System text (the reward's criteria) for chat prompts")

    @model_validator(mode="after")
    def _one_prompt(self):
        given = [f for f in PROMPT_FORMS if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prompt, messages, prompt_ids (got {given or 'none'})")
        return self

    def prompt_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.messages is not None:
            out["messages"] = [m.model_dump() for m in self.messages]
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.prompt_ids is not None:
            out["prompt_ids"] = self.prompt_ids
        if self.system is not None:
            out["system"] = self.system
        return out


class ScoreItem(PromptFields):
    response: StrictStr | None = Field(None, description="Response text")
    response_ids: list[TokenId] | None = Field(
        None, min_length=1, description="Response token ids, used exactly as given"
    )
    steps: list[StepText] | None = Field(
        None,
        min_length=1,
        description="The response as a list of steps: scored as "
        "their concatenation (equal to response if both are given); results gain steps",
    )
    step_separator: StrictStr | None = Field(
        None,
        min_length=1,
        description="Split the text response into steps after each occurrence (kept with the step it ends)",
    )
    step_ends: list[StepEnd] | None = Field(
        None,
        min_length=1,
        description="Steps of response_ids: exclusive end "
        "indices, strictly increasing, in [1, H]; later tokens join the last step",
    )
    terminal: Terminal | None = Field(
        None, description="This item's V(s_H) (default: the request's): bootstrap for a rollout cut off by length"
    )
    add_eos: StrictBool | None = Field(
        None, description="This item's add_eos (default: the request's): false for a rollout cut off by length"
    )

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"allOf": [_exactly_one_of(*PROMPT_FORMS), _RESPONSE_FORMS]}
    )

    @model_validator(mode="after")
    def _one_response(self):
        if (self.response_ids is None) == (self.response is None and self.steps is None):
            raise ValueError("give exactly one of response (or steps), response_ids")
        return self

    def encoder_kwargs(self) -> dict:
        out = self.prompt_kwargs()
        if self.response_ids is not None:
            out["response_ids"] = self.response_ids
        elif self.response is not None:
            out["response"] = self.response
        for k in ("steps", "step_separator", "step_ends", "terminal", "add_eos"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


class RequestOptions(BaseModel):
    """The scoring options as a request body spells them; validated into scorer.ScoreOptions."""

    model_config = _STRICT
    model: StrictStr | None = Field(None, description="Optional; must name the served model if given")
    aggregation: Aggregation = "sum"
    gamma: StrictFloat = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="Discount for aggregation=discounted")
    beta: StrictFloat = Field(0.0, ge=0, allow_inf_nan=False, description="Floor on the discount weight")
    terminal: Terminal = Field("zero", description="V(s_H): zero (paper) or bootstrap (cut-off responses)")
    return_tokens: StrictBool = Field(False, description="Include per-token rewards")
    truncate: StrictBool = Field(False, description="Drop the start of the prompt to fit max_model_len")
    add_eos: StrictBool = Field(True, description="End text responses with the end-of-turn token")
    contrast: StrictBool = Field(
        False,
        description="Criteria contrast: score = the aggregation of r_h(criteria) - "
        "r_h(baseline), per token; needs messages and a criteria system (scoring/contrast.py)",
    )
    baseline_system: StrictStr | None = Field(
        None,
        description="With contrast: the baseline's system turn (default: "
        "the item without system, i.e. the chat template's default)",
    )
    item_errors: ItemErrors = Field(
        "reject",
        description="reject: a bad item fails the request; report: the request is answered and a bad item "
        "gets {index, score: null, error} in its place, every other item scored as if sent alone",
    )
    return_terms: StrictBool = Field(
        False, description="Add terms {loglik, v_start, v_end} to each result: sum = loglik + v_start - v_end"
    )

    def score_options(self) -> ScoreOptions:
        return ScoreOptions(
            aggregation=self.aggregation,
            gamma=self.gamma,
            beta=self.beta,
            terminal=self.terminal,
            return_tokens=self.return_tokens,
            truncate=self.truncate,
            return_terms=self.return_terms,
        )

    def job_spec(self, items: list[dict[str, Any]], param: str) -> JobSpec:
        if self.baseline_system is not None and not self.contrast:
            raise RequestError("baseline_system is only used with contrast: true", "baseline_system")
        return JobSpec(
            items=items,
            options=self.score_options(),
            param=param,
            add_eos=self.add_eos,
            contrast=self.contrast,
            baseline_system=self.baseline_system,
            item_errors=self.item_errors,
        )


class ScoreRequest(RequestOptions):
    items: list[ScoreItem] = Field(min_length=1)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"messages": [{"role": "user", "content": "What is 2+3?"}], "response": "5"},
                        {"prompt": "2+3=", "response": "5"},
                    ],
                    "aggregation": "sum",
                    "return_tokens": True,
                }
            ]
        },
    )


class CompareRequest(RequestOptions, PromptFields):
    responses: list[StrictStr] | None = Field(None, min_length=2)
    responses_ids: list[Annotated[list[TokenId], Field(min_length=1)]] | None = Field(None, min_length=2)
    step_separator: StrictStr | None = Field(None, min_length=1, description="Split each text response into steps")
    responses_step_ends: list[Annotated[list[StepEnd], Field(min_length=1)]] | None = Field(
        None, min_length=2, description="step_ends of each of responses_ids"
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            **_schema_rules(PROMPT_FORMS, ("responses", "responses_ids")),
            "examples": [
                {
                    "messages": [{"role": "user", "content": "What is 2+3?"}],
                    "system": "Answer with digits only.",
                    "responses": ["5", "five", "6"],
                }
            ],
        },
    )

    @model_validator(mode="after")
    def _one_responses(self):
        if (self.responses is None) == (self.responses_ids is None):
            raise ValueError("give exactly one of responses, responses_ids (at least 2)")
        return self

    def response_kwargs(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]]
        if self.responses is not None:
            out = [{"response": r} for r in self.responses]
        else:
            out = [{"response_ids": r} for r in self.responses_ids or []]
        if self.step_separator is not None:
            out = [{**r, "step_separator": self.step_separator} for r in out]
        if self.responses_step_ends is not None:
            if len(self.responses_step_ends) != len(out):
                raise RequestError(
                    f"{len(self.responses_step_ends)} responses_step_ends for {len(out)} responses",
                    "responses_step_ends",
                )
            out = [{**r, "step_ends": e} for r, e in zip(out, self.responses_step_ends)]
        return out


_FINGERPRINT = "Hash of what produced the reward: weights, config, tokenizer + chat template, alpha"


class TokenReward(BaseModel):
    id: int
    text: str
    reward: float
    logprob: float
    offset: tuple[int, int] | None = Field(
        None,
        description="[start, end) of the token in the response text "
        "(text responses; appended end-of-turn: zero-width at the end)",
    )
    criteria_reward: float | None = Field(
        None, description="contrast: r_h under the criteria (reward = this - baseline)"
    )
    baseline_reward: float | None = Field(None, description="contrast: r_h under the baseline context")


class StepResult(BaseModel):
    start: int = Field(description="First response token of the step")
    end: int = Field(description="One past its last response token")
    num_tokens: int
    reward: float = Field(description="Sum of the step's token rewards")
    logprob: float = Field(description="Sum of the step's token log-probs")
    text: str | None = None


class Terms(BaseModel):
    loglik: float = Field(description="alpha x the response's summed log-probability")
    v_start: float = Field(description="V(s_0): the prompt's value, a per-prompt offset")
    v_end: float = Field(description="V(s_H) used: 0 (terminal zero) or v_{N-1} (bootstrap)")


class ErrorBody(BaseModel):
    type: str
    code: str = Field(description="Why, stably: sequence_too_long, token_out_of_vocabulary, overloaded, ...")
    message: str
    param: str | None = None


class ItemError(BaseModel):
    """An item that could not be scored (item_errors: report), in its place."""

    index: int
    score: None = None
    error: ErrorBody


class ScoreResult(BaseModel):
    index: int
    score: float
    num_tokens: int = Field(description="Response tokens H")
    prompt_tokens: int
    truncated_tokens: int = Field(0, description="Prompt tokens dropped from the start to fit")
    tokens: list[TokenReward] | None = None
    steps: list[StepResult] | None = None
    criteria_score: float | None = Field(None, description="contrast: the aggregation under the criteria")
    baseline_score: float | None = Field(None, description="contrast: the aggregation under the baseline context")
    terms: Terms | None = Field(None, description="return_terms: the score's telescoping terms")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ScoreResponse(BaseModel):
    model: str
    alpha: float
    system_fingerprint: str | None = Field(None, description=_FINGERPRINT)
    aggregation: Aggregation
    results: list[ScoreResult | ItemError]
    usage: Usage


class CompareResponse(BaseModel):
    model: str
    alpha: float
    system_fingerprint: str | None = Field(None, description=_FINGERPRINT)
    aggregation: Aggregation
    scores: list[float | None] = Field(description="null: the response could not be scored (item_errors: report)")
    ranking: list[int] = Field(description="Indices of the responses that scored, best first")
    best: int | None = Field(description="The best response; null when none scored")
    failed: list[int] = Field(default_factory=list, description="Indices of the responses that could not be scored")
    probabilities: list[list[float | None]] = Field(
        description="P[i][j] = sigmoid(R_i - R_j), chance i beats j; null in a failed response's row and column"
    )
    results: list[ScoreResult | ItemError]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    max_model_len: int
    alpha: float
    engine: str
    vocab_size: int
    dtype: str | None = Field(
        None, description="The dtype the engine computes in (--dtype auto resolved for this device)"
    )
    system_fingerprint: str | None = Field(None, description=_FINGERPRINT)
    batch_invariant: bool = Field(
        False, description="Every reward of an item is bit-identical whatever it was batched with (--batch-invariant)"
    )
    determinism: dict[str, str | bool] | None = Field(
        None, description="What the rewards' bits rest on: threads, GEMM path, attention path, LM head, scheduling"
    )
    fingerprint_inputs: dict[str, Any] | None = Field(
        None,
        description="What system_fingerprint hashes: files (name -> SHA-256), revision (the hub snapshot's commit, "
        "not hashed), alpha, dtype, head_dtype, engine, versions, tensor_parallel_size, device, cpu_gemm, "
        "batch_invariant. system_fingerprint = 'fp_' + sha256(json.dumps(inputs less revision, "
        "sort_keys=True))[:16]",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorResponse(BaseModel):
    error: ErrorBody


class Status(BaseModel):
    status: str
