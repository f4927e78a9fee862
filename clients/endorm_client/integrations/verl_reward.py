"""verl reward manager ``endorm``: the endogenous reward in verl's reward tensor, dense or sparse.

Pinned against verl 0.9.1 (``verl.experimental.reward_loop.reward_manager``: ``register``,
``RewardManagerBase``; the legacy ``verl.workers.reward_manager`` batch API too). Importing
this module registers ``EndoRMRewardManager`` under ``endorm`` in both registries:

    reward.reward_manager.source=importlib
    reward.reward_manager.module.path=<site-packages>/endorm_client/integrations/verl_reward.py
    reward.reward_manager.name=EndoRMRewardManager
    +reward.endorm.base_url=http://rm:8000 +reward.endorm.mode=dense      # or ENDORM_* variables

verl's batch layout (what ``DataProto.batch`` holds after rollout): ``prompts`` [B, P]
LEFT-padded, ``responses`` [B, R] RIGHT-padded, ``attention_mask`` [B, P + R] (1 on real
tokens). Row i's prompt is ``prompts[i][attention_mask[i, :P] == 1]``, its response
``responses[i, :L_i]`` with ``L_i = attention_mask[i, P:].sum()``. The reward tensor is
[B, R] float32:

* ``mode=sparse`` (verl's convention): the sequence score (``aggregation``) at
  ``[i, L_i - 1]``, zeros elsewhere;
* ``mode=dense``: ``[i, h]`` = the reward of response token h (h < L_i), zeros on padding;
  each row sums to the sequence ``sum``.

``input=ids`` (default; the policy and the reward model share a tokenizer) sends the exact
token ids. ``input=text`` (different tokenizers) sends the decoded prompt (special tokens
kept: verl already applied the policy's chat template) and response (special tokens
dropped; the reward model's end-of-turn token is appended when the policy's response ended
with EOS); dense rewards are then placed on the policy's tokens by character offsets
(``endorm_client.alignment``), still summing to the sequence ``sum``. ``step_separator``
(text input) scores the response as steps, for ``aggregation=step_min`` / ``step_last``.

Cut-off rollouts: a row whose last valid response token is not the tokenizer's end-of-sequence id
was cut off by the length limit; it is scored with ``terminal: "bootstrap"`` (``unfinished_terminal``;
``none`` keeps the request's ``terminal``) and, as text, without an appended end-of-turn token, in
the same request as the finished rows (per-item options).

A row the server cannot score (``item_errors: "report"``) gets ``fallback`` (default 0.0) as its
sparse score (dense: at its last token), is logged and counted (``manager.failed``), and
``reward_extra_info["endorm_failed"]`` is 1.0 on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Sequence, cast

import torch

from endorm_client.alignment import map_rewards
from endorm_client.client import AsyncRewardClient, RewardClient
from endorm_client.integrations._outcomes import (
    DEFAULT_UNFINISHED_TERMINAL,
    FailedItems,
    eos_ids,
    finished,
    unfinished_options,
)
from endorm_client.loop_clients import PerLoopClients
from endorm_client.steps import split_steps
from endorm_client.types import ItemError

__all__ = [
    "EndoRMRewardManager",
    "EndoRMBatchRewardManager",
    "Options",
    "batch_rows",
    "reward_tensor",
    "decoded_offsets",
]


@dataclass(frozen=True)
class Options:
    base_url: str | None = None  # None: ENDORM_BASE_URL (comma-separated replicas)
    api_key: str | None = None  # None: ENDORM_API_KEY
    mode: str = "sparse"  # sparse | dense
    input: str = "ids"  # ids | text
    aggregation: str = "sum"  # the sparse score
    step_separator: str | None = None
    chunk_size: int | None = None
    fallback: float = 0.0  # the reward of a row the server could not score
    unfinished_terminal: str | None = DEFAULT_UNFINISHED_TERMINAL  # cut-off rows; "none": the request's

    @classmethod
    def of(cls, config: Any = None, **overrides: Any) -> Options:
        """From ``config.reward.endorm`` (a verl/OmegaConf config or a dict), ``ENDORM_*`` env, overrides."""
        given: dict[str, Any] = {}
        for f in fields(cls):
            env = os.environ.get(f"ENDORM_{'REWARD_' if f.name in ('mode', 'input') else ''}{f.name.upper()}")
            if env and f.name == "step_separator":  # escapes, as ENDORM_STEP_SEPARATOR='\\n\\n'
                env = env.encode("latin-1", "backslashreplace").decode("unicode_escape")
            if env:
                given[f.name] = int(env) if f.name == "chunk_size" else float(env) if f.name == "fallback" else env
        section = _section(config)
        given.update({k: v for k, v in section.items() if k in {f.name for f in fields(cls)} and v is not None})
        given.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(given.get("unfinished_terminal"), str) and given["unfinished_terminal"].lower() in (
            "none",
            "null",
        ):
            given["unfinished_terminal"] = None
        if "fallback" in given:
            given["fallback"] = float(given["fallback"])
        opts = cls(**given)
        if opts.mode not in ("sparse", "dense") or opts.input not in ("ids", "text"):
            raise ValueError(f"mode must be sparse|dense and input ids|text, got {opts.mode!r}, {opts.input!r}")
        if opts.step_separator is not None and opts.input != "text":
            raise ValueError("step_separator splits text: use input=text")
        if opts.aggregation in ("step_min", "step_last") and opts.step_separator is None:
            raise ValueError(f"aggregation={opts.aggregation!r} needs step_separator")
        return opts


def _section(config: Any) -> dict:
    if config is None:
        return {}
    try:
        sec = config["reward"]["endorm"] if "reward" in config else config.get("endorm")
    except (KeyError, TypeError, AttributeError):
        return {}
    if sec is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(sec):
            return dict(cast(dict, OmegaConf.to_container(sec, resolve=True)))
    except ImportError:
        pass
    return dict(sec)


# ------------------------------------------------------------------ batch layout


@dataclass
class Row:
    prompt_ids: list[int]
    response_ids: list[int]  # the L_i valid response tokens


def batch_rows(batch: Any) -> list[Row]:
    """Valid prompt and response tokens of each row (left-padded prompts, right-padded responses)."""
    prompts, responses, mask = batch["prompts"], batch["responses"], batch["attention_mask"]
    P = prompts.shape[-1]
    rows = []
    for i in range(prompts.shape[0]):
        keep = mask[i, :P].bool()
        L = int(mask[i, P:].sum())
        rows.append(Row(prompt_ids=prompts[i][keep].tolist(), response_ids=responses[i, :L].tolist()))
    return rows


def reward_tensor(
    responses: torch.Tensor, rows: Sequence[Row], values: Sequence[float | Sequence[float]]
) -> torch.Tensor:
    """[B, R] float32: a float per row -> at its last valid token; a list -> on its first L_i tokens."""
    out = torch.zeros_like(responses, dtype=torch.float32)
    for i, (row, v) in enumerate(zip(rows, values)):
        L = len(row.response_ids)
        if L == 0:
            continue
        if isinstance(v, (list, tuple)):
            if len(v) != L:
                raise ValueError(f"row {i}: {len(v)} dense rewards for {L} response tokens")
            out[i, :L] = torch.tensor(v, dtype=torch.float32)
        else:
            out[i, L - 1] = float(cast(float, v))
    return out


def decoded_offsets(
    tokenizer: Any, ids: Sequence[int], *, skip_special_tokens: bool = True
) -> tuple[str, list[tuple[int, int]]]:
    """(decoded text, each token's [start, end) in it), by incremental decoding (a sliding window)."""
    ids = [int(i) for i in ids]

    def dec(xs: list[int]) -> str:
        if not xs:
            return ""
        return tokenizer.decode(xs, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    spans, text, prefix, read = [], "", 0, 0
    for k in range(len(ids)):
        prefix_text = dec(ids[prefix:read])
        new_text = dec(ids[prefix : k + 1])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            piece = new_text[len(prefix_text) :]
            spans.append((len(text), len(text) + len(piece)))
            text += piece
            prefix, read = read, k + 1
        else:
            spans.append((len(text), len(text)))
    if read < len(ids):  # trailing bytes that never complete a character
        piece = dec(ids[prefix:])[len(dec(ids[prefix:read])) :]
        spans[-1] = (len(text), len(text) + len(piece))
        text += piece
    return text, spans


# ------------------------------------------------------------------ the scoring


class _Core:
    def __init__(self, tokenizer: Any, options: Options) -> None:
        self.tokenizer = tokenizer
        self.options = options

    def finished(self, row: Row) -> bool:
        """The policy ended this row (its last valid token is an end-of-sequence id), not the length limit."""
        return finished(row.response_ids, eos_ids(getattr(self.tokenizer, "eos_token_id", None)))

    def item(self, row: Row) -> tuple[dict[str, Any], list[tuple[int, int]] | None]:
        """The /score item of a row, and (text input) the policy tokens' spans in the response text."""
        text_input = self.options.input == "text"
        done = self.finished(row)
        cut = {} if done else unfinished_options(self.options.unfinished_terminal, text=text_input)
        if not text_input:  # exact tokens: the EOS is there when the policy generated it
            return {"prompt_ids": row.prompt_ids, "response_ids": row.response_ids, **cut}, None
        prompt = self.tokenizer.decode(row.prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text, spans = decoded_offsets(self.tokenizer, row.response_ids)
        item: dict[str, Any] = {"prompt": prompt, "response": text}
        if self.options.step_separator is not None and text:
            item = {"prompt": prompt, "steps": split_steps(text, self.options.step_separator)}
        return {**item, **({"add_eos": True} if done else cut)}, spans

    def fallback_values(self, row: Row) -> float | list[float]:
        """What a row that could not be scored gets: the fallback (dense: at its last token)."""
        f = float(self.options.fallback)
        if self.options.mode == "sparse":
            return f
        return [0.0] * (len(row.response_ids) - 1) + [f] if row.response_ids else []

    def values(self, row: Row, result: Any, spans: list[tuple[int, int]] | None) -> float | list[float]:
        if self.options.mode == "sparse":
            return float(result.score)
        if spans is None:  # ids: one reward per policy token
            return [t.reward for t in result.tokens]
        if not row.response_ids:
            return []
        return map_rewards([t.reward for t in result.tokens], [t.offset for t in result.tokens], spans)

    def score_kwargs(self) -> dict[str, Any]:
        o = self.options
        return {
            "aggregation": o.aggregation,
            "return_tokens": o.mode == "dense",
            "chunk_size": o.chunk_size,
            "item_errors": "report",
        }

    def client_kwargs(self) -> dict[str, Any]:
        return {"api_key": self.options.api_key} if self.options.api_key else {}

    def outcome(
        self, rows: Sequence[Row], built: list, results: list, failed: FailedItems, offset: int = 0
    ) -> tuple[list, list[float], list[float]]:
        """(values, scores, failed flags) of each row from its result; a failed one gets the fallback."""
        values: list[Any] = []
        scores: list[float] = []
        flags: list[float] = []
        for i, (row, (_, spans), r) in enumerate(zip(rows, built, results)):
            if isinstance(r, ItemError):
                failed.record(offset + i, r.error.code, r.error.message, self.options.fallback)
                values.append(self.fallback_values(row))
                scores.append(float(self.options.fallback))
                flags.append(1.0)
            else:
                values.append(self.values(row, r, spans))
                scores.append(float(r.score))
                flags.append(0.0)
        return values, scores, flags

    def score_rows_sync(
        self, client: RewardClient, rows: Sequence[Row], failed: FailedItems
    ) -> tuple[list, list[float], list[float]]:
        if not rows:
            return [], [], []
        built = [self.item(r) for r in rows]
        res = client.score_batch([b[0] for b in built], **self.score_kwargs())
        return self.outcome(rows, built, res.results, failed)

    async def score_rows(
        self, client: AsyncRewardClient, rows: Sequence[Row], failed: FailedItems, offset: int = 0
    ) -> tuple[list, list[float], list[float]]:
        if not rows:
            return [], [], []
        built = [self.item(r) for r in rows]
        res = await client.score_batch([b[0] for b in built], **self.score_kwargs())
        return self.outcome(rows, built, res.results, failed, offset)


# ------------------------------------------------------------------ verl's registries

from verl import DataProto  # noqa: E402  (this module is verl-only)
from verl.experimental.reward_loop.reward_manager import register  # noqa: E402
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase  # noqa: E402
from verl.workers.reward_manager import register as register_legacy  # noqa: E402
from verl.workers.reward_manager.abstract import AbstractRewardManager  # noqa: E402


@register("endorm")
class EndoRMRewardManager(RewardManagerBase):
    """verl's reward loop: ``run_single`` per sample (async), ``assemble_rm_scores`` per batch."""

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any = None,
        reward_router_address: Any = None,
        reward_model_tokenizer: Any = None,
        **overrides: Any,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        self.core = _Core(tokenizer, Options.of(config, **overrides))
        # a client per event loop that awaits run_single, closed when that loop shuts down
        self._clients = PerLoopClients(
            lambda: AsyncRewardClient(self.core.options.base_url, **self.core.client_kwargs())
        )
        self.failed = FailedItems("verl")

    async def run_single(self, data: DataProto) -> dict:
        rows = batch_rows(data[-1:].batch)
        values, scores, flags = await self.core.score_rows(await self._clients.get(), rows, self.failed)
        return {"reward_score": values[0], "reward_extra_info": {"endorm_score": scores[0], "endorm_failed": flags[0]}}

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list) -> torch.Tensor:
        return reward_tensor(data.batch["responses"], batch_rows(data.batch), scores)


@register_legacy("endorm")
class EndoRMBatchRewardManager(AbstractRewardManager):
    """verl's batch reward-manager API (``reward_fn(data, return_dict)``): the whole batch in
    ``score_batch`` calls (chunked, in parallel), not one request per sample."""

    def __init__(
        self,
        tokenizer: Any,
        num_examine: int = 0,
        compute_score: Any = None,
        reward_fn_key: str = "data_source",
        config: Any = None,
        client: RewardClient | None = None,
        **overrides: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.core = _Core(tokenizer, Options.of(config, **overrides))
        self.client = client or RewardClient(self.core.options.base_url, **self.core.client_kwargs())
        self.failed = FailedItems("verl")

    def __call__(self, data: DataProto, return_dict: bool = False) -> torch.Tensor | dict[str, Any]:
        rows = batch_rows(data.batch)
        values, scores, flags = self.core.score_rows_sync(self.client, rows, self.failed)
        tensor = reward_tensor(data.batch["responses"], rows, values)
        if return_dict:
            return {"reward_tensor": tensor, "reward_extra_info": {"endorm_score": scores, "endorm_failed": flags}}
        return tensor
