"""Request and response bodies of the HTTP API (the contract clients rely on)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

Aggregation = Literal["sum", "mean", "discounted", "loglik_sum", "loglik_mean"]
Terminal = Literal["zero", "bootstrap"]

_STRICT = ConfigDict(extra="forbid")

TokenId = Annotated[StrictInt, Field(ge=0)]


def _exactly_one_of(*fields: str) -> dict:
    """JSON-schema form of "exactly one of these fields, not null" (what the validators enforce)."""
    return {"oneOf": [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in fields]}


def _schema_rules(*groups: tuple[str, ...]) -> dict:
    return {"allOf": [_exactly_one_of(*g) for g in groups]}


PROMPT_FORMS = ("prompt", "messages", "prompt_ids")


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr


class PromptFields(BaseModel):
    """Exactly one prompt form: chat ``messages``, raw ``prompt`` text or ``prompt_ids``."""

    model_config = _STRICT
    prompt: StrictStr | None = Field(None, description="Raw prompt text (tokenized as is, no chat template)")
    messages: list[Message] | None = Field(None, min_length=1, description="Chat turns, rendered with the model's chat template")
    prompt_ids: list[TokenId] | None = Field(None, min_length=1, description="Prompt token ids, used exactly as given")
    system: StrictStr | None = Field(None, description="System text (the reward's criteria) for chat prompts")

    @model_validator(mode="after")
    def _one_prompt(self):
        given = [f for f in PROMPT_FORMS if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prompt, messages, prompt_ids (got {given or 'none'})")
        return self

    def prompt_kwargs(self) -> dict:
        out = {}
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
    response_ids: list[TokenId] | None = Field(None, min_length=1, description="Response token ids, used exactly as given")

    model_config = ConfigDict(extra="forbid", json_schema_extra=_schema_rules(PROMPT_FORMS, ("response", "response_ids")))

    @model_validator(mode="after")
    def _one_response(self):
        if (self.response is None) == (self.response_ids is None):
            raise ValueError("give exactly one of response, response_ids")
        return self

    def encoder_kwargs(self) -> dict:
        out = self.prompt_kwargs()
        if self.response is not None:
            out["response"] = self.response
        else:
            out["response_ids"] = self.response_ids
        return out


class ScoringOptions(BaseModel):
    model_config = _STRICT
    model: StrictStr | None = Field(None, description="Optional; must name the served model if given")
    aggregation: Aggregation = "sum"
    gamma: StrictFloat = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="Discount for aggregation=discounted")
    beta: StrictFloat = Field(0.0, ge=0, allow_inf_nan=False, description="Floor on the discount weight")
    terminal: Terminal = Field("zero", description="V(s_H): zero (paper) or bootstrap (cut-off responses)")
    return_tokens: StrictBool = Field(False, description="Include per-token rewards")
    truncate: StrictBool = Field(False, description="Drop the start of the prompt to fit max_model_len")
    add_eos: StrictBool = Field(True, description="End text responses with the end-of-turn token")


class ScoreRequest(ScoringOptions):
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


class CompareRequest(ScoringOptions, PromptFields):
    responses: list[StrictStr] | None = Field(None, min_length=2)
    responses_ids: list[Annotated[list[TokenId], Field(min_length=1)]] | None = Field(None, min_length=2)

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
            ]
        },
    )

    @model_validator(mode="after")
    def _one_responses(self):
        if (self.responses is None) == (self.responses_ids is None):
            raise ValueError("give exactly one of responses, responses_ids (at least 2)")
        return self

    def response_kwargs(self) -> list[dict]:
        if self.responses is not None:
            return [{"response": r} for r in self.responses]
        return [{"response_ids": r} for r in self.responses_ids or []]


_FINGERPRINT = "Hash of what produced the reward: weights, config, tokenizer + chat template, alpha"


class TokenReward(BaseModel):
    id: int
    text: str
    reward: float
    logprob: float


class ScoreResult(BaseModel):
    index: int
    score: float
    num_tokens: int = Field(description="Response tokens H")
    prompt_tokens: int
    truncated_tokens: int = Field(0, description="Prompt tokens dropped from the start to fit")
    tokens: list[TokenReward] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ScoreResponse(BaseModel):
    model: str
    alpha: float
    system_fingerprint: str | None = Field(None, description=_FINGERPRINT)
    aggregation: Aggregation
    results: list[ScoreResult]
    usage: Usage


class CompareResponse(BaseModel):
    model: str
    alpha: float
    system_fingerprint: str | None = Field(None, description=_FINGERPRINT)
    aggregation: Aggregation
    scores: list[float]
    ranking: list[int] = Field(description="Response indices, best first")
    best: int
    probabilities: list[list[float]] = Field(description="P[i][j] = sigmoid(R_i - R_j), chance i beats j")
    results: list[ScoreResult]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    max_model_len: int
    alpha: float
    engine: str
    vocab_size: int
    system_fingerprint: str | None = Field(None, description=_FINGERPRINT)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Status(BaseModel):
    status: str
