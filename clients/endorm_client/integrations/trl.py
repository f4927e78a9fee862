"""Reward functions for TRL's ``GRPOTrainer`` (also RLOO and other trainers that call
``reward_func(prompts=..., completions=..., completion_ids=..., **columns)``).

    from trl import GRPOTrainer
    from endorm_client.integrations.trl import make_reward_function

    reward = make_reward_function("http://rm:8000", api_key="...")      # sync
    areward = make_reward_function("http://rm:8000", asynchronous=True) # async (TRL runs it on its loop)
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], ...)

Mapping of TRL's inputs to ``/score`` items:

* conversational prompts (lists of ``{"role", "content"}``) -> ``messages`` (rendered with the
  reward model's chat template and generation prompt); the completion is the text of the
  generated message(s) (``[{"role": "assistant", "content": ...}]``) -> ``response``;
* standard prompts (strings) -> ``prompt`` (raw text); the completion string -> ``response``;
* ``use_completion_ids=True`` sends TRL's ``completion_ids`` as ``response_ids`` instead of
  the decoded text: exact tokens (EOS included only when the policy generated it), valid
  when the policy and the reward model share a tokenizer.

Cut-off completions: with ``eos_token_id`` (the policy's end-of-sequence id(s), e.g.
``tokenizer.eos_token_id``), a completion whose ``completion_ids`` do not end with one was cut off
by the length limit (TRL's own rule, ``mask_truncated_completions``): it is sent with
``terminal: "bootstrap"`` and, as text, without an appended end-of-turn token
(``unfinished_terminal=None`` keeps the request's terminal). Without ``eos_token_id`` every
completion is scored as finished.

A completion the server cannot score (too long without ``truncate``, an id outside the reward
model's vocabulary, ...) gets ``None``, which TRL's GRPO trainer treats as "not applicable" (a NaN
its advantages skip); it is logged and counted (``fn.failed``; ``endorm/failed_items`` metric).

The function returns one float per completion (the sequence reward, ``aggregation`` of
the server, default ``sum``; with ``step_separator`` the completion is sent as steps, so
``aggregation="step_min"`` / ``"step_last"`` score its weakest / last step), calls the server in chunks within its limits and with
bounded concurrency, and logs ``endorm/response_tokens`` through TRL's ``log_metric``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from endorm_client.client import AsyncRewardClient, RewardClient
from endorm_client.integrations._outcomes import (
    DEFAULT_UNFINISHED_TERMINAL,
    FailedItems,
    eos_ids,
    finished,
    unfinished_options,
)
from endorm_client.steps import split_steps
from endorm_client.types import ItemError, ScoreResponse

__all__ = ["make_reward_function", "EndoRMRewardFunction", "AsyncEndoRMRewardFunction", "to_items"]

_OPTIONS = ("aggregation", "gamma", "beta", "terminal", "truncate", "add_eos", "model", "contrast", "baseline_system")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _text(completion.get("content"))
    if isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"] or msgs
        return "".join(_text(m.get("content")) for m in assistant)
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def to_items(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]] | None = None,
    *,
    system: str | None = None,
    use_completion_ids: bool = False,
    step_separator: str | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    unfinished_terminal: str | None = DEFAULT_UNFINISHED_TERMINAL,
) -> list[dict]:
    """TRL's (prompts, completions[, completion_ids]) -> ``/score`` items (``steps`` with a separator);
    with ``eos_token_id`` and ``completion_ids``, a completion not ended by one is sent as cut off."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    if use_completion_ids and step_separator is not None:
        raise ValueError("step_separator splits completion text: not with use_completion_ids")
    if use_completion_ids and completion_ids is None:
        raise ValueError("use_completion_ids=True but the trainer passed no completion_ids")
    eos = eos_ids(eos_token_id)
    items = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        if isinstance(prompt, str):
            if system is not None:
                raise ValueError("system (reward criteria) needs conversational prompts (lists of messages)")
            item: dict[str, Any] = {"prompt": prompt}
        else:
            item = {"messages": [{"role": m["role"], "content": _text(m.get("content"))} for m in prompt]}
            if system is not None:
                item["system"] = system
        if use_completion_ids:
            assert completion_ids is not None  # checked above
            item["response_ids"] = [int(t) for t in completion_ids[i]]
        elif step_separator is not None:
            text = _completion_text(completion)
            item["steps" if text else "response"] = split_steps(text, step_separator) if text else text
        else:
            item["response"] = _completion_text(completion)
        if eos and completion_ids is not None and not finished(completion_ids[i], eos):
            item.update(unfinished_options(unfinished_terminal, text=not use_completion_ids))
        items.append(item)
    return items


class _Common:
    def __init__(
        self,
        client: Any,
        base_url: Any,
        client_kwargs: dict,
        name: str,
        system: str | None,
        use_completion_ids: bool,
        options: dict,
        chunk_size: int | None,
        max_concurrency: int | None,
        step_separator: str | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        unfinished_terminal: str | None = DEFAULT_UNFINISHED_TERMINAL,
    ) -> None:
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"unknown scoring options: {sorted(unknown)}")
        self.__name__ = name  # TRL names the metric rewards/<__name__>/mean
        self._client = client
        self._base_url = base_url
        self._client_kwargs = client_kwargs
        self.system = system
        self.use_completion_ids = use_completion_ids
        self.step_separator = step_separator
        self.options = {k: v for k, v in options.items() if v is not None}
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.eos_token_id = eos_token_id
        self.unfinished_terminal = unfinished_terminal
        self.calls = 0
        self.failed = FailedItems(name)

    def _items(self, prompts, completions, completion_ids) -> list[dict]:
        return to_items(
            prompts,
            completions,
            completion_ids,
            system=self.system,
            use_completion_ids=self.use_completion_ids,
            step_separator=self.step_separator,
            eos_token_id=self.eos_token_id,
            unfinished_terminal=self.unfinished_terminal,
        )

    def _rewards(self, kwargs: dict, res: ScoreResponse) -> list[float | None]:
        """One reward per completion, None for one that failed (logged, counted); logs TRL metrics."""
        for f in res.failures:
            self.failed.record(f.index, f.error.code, f.error.message, None)
        log_metric = kwargs.get("log_metric")
        scored = [r for r in res.results if not isinstance(r, ItemError)]
        if callable(log_metric) and res.results:
            if scored:
                log_metric("endorm/response_tokens", sum(r.num_tokens for r in scored) / len(scored))
            log_metric("endorm/failed_items", float(len(res.results) - len(scored)))
        return [None if isinstance(r, ItemError) else r.score for r in res.results]

    def __getstate__(self) -> dict:  # picklable: the HTTP client is rebuilt where it is used
        state = dict(self.__dict__)
        if state.get("_owned", False):
            state["_client"] = None
        state.pop("_loop", None)
        return state


class EndoRMRewardFunction(_Common):
    """Synchronous TRL reward function (a picklable callable)."""

    def _get_client(self) -> RewardClient:
        if self._client is None:
            self._client = RewardClient(self._base_url, **self._client_kwargs)
            self._owned = True
        return self._client

    def __call__(
        self, prompts: list, completions: list, completion_ids: list | None = None, **kwargs: Any
    ) -> list[float | None]:
        items = self._items(prompts, completions, completion_ids)
        res = self._get_client().score_batch(
            items, chunk_size=self.chunk_size, max_concurrency=self.max_concurrency, **self.options
        )
        self.calls += 1
        return self._rewards(kwargs, res)


class AsyncEndoRMRewardFunction(_Common):
    """Asynchronous TRL reward function (``async __call__``; TRL awaits it on its event loop)."""

    def _get_client(self) -> AsyncRewardClient:
        loop = asyncio.get_running_loop()
        if self._client is None or (getattr(self, "_owned", False) and getattr(self, "_loop", None) is not loop):
            self._client = AsyncRewardClient(self._base_url, **self._client_kwargs)
            self._owned, self._loop = True, loop
        return self._client

    async def __call__(
        self, prompts: list, completions: list, completion_ids: list | None = None, **kwargs: Any
    ) -> list[float | None]:
        items = self._items(prompts, completions, completion_ids)
        res = await self._get_client().score_batch(
            items, chunk_size=self.chunk_size, max_concurrency=self.max_concurrency, **self.options
        )
        self.calls += 1
        return self._rewards(kwargs, res)


def make_reward_function(
    client: RewardClient | AsyncRewardClient | str | Sequence[str] | None = None,
    *,
    asynchronous: bool = False,
    name: str = "endorm",
    system: str | None = None,
    use_completion_ids: bool = False,
    aggregation: str | None = None,
    gamma: float | None = None,
    beta: float | None = None,
    terminal: str | None = None,
    truncate: bool | None = None,
    add_eos: bool | None = None,
    model: str | None = None,
    chunk_size: int | None = None,
    max_concurrency: int | None = None,
    step_separator: str | None = None,
    contrast: bool | None = None,
    baseline_system: str | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    unfinished_terminal: str | None = DEFAULT_UNFINISHED_TERMINAL,
    **client_kwargs: Any,
) -> EndoRMRewardFunction | AsyncEndoRMRewardFunction:
    """A TRL reward function backed by the EndoRM server.

    client: a ``RewardClient`` (sync) / ``AsyncRewardClient`` (async), or base URL(s) (None:
        ``ENDORM_BASE_URL``); with URLs, ``client_kwargs`` (``api_key``, timeouts, retries...)
        build the client lazily, in the process and event loop that calls the function.
    asynchronous: return an async function (TRL >= 0.20 runs async reward functions concurrently).
    system: reward criteria text, sent as the system turn (conversational prompts only).
    use_completion_ids: score TRL's exact ``completion_ids`` (same tokenizer only).
    aggregation, gamma, beta, terminal, truncate, add_eos, model: ``/score`` options; the step
        aggregations ``step_min`` / ``step_last`` need ``step_separator``.
    step_separator: send each completion as steps split after this text (e.g. ``"\n\n"``); a
        completion without it is one step.
    contrast: the criteria-contrast reward r(x, system, y) - r(x, baseline, y) (needs ``system`` and
        conversational prompts); baseline_system: the baseline's system turn (default: the prompt as given).
    eos_token_id: the policy's end-of-sequence id(s): a completion whose ``completion_ids`` do not end
        with one was cut off, and is scored with ``unfinished_terminal`` (default ``"bootstrap"``;
        None: the request's ``terminal``) and no appended end-of-turn token.

    A completion that cannot be scored returns None (TRL: not applicable), logged and counted in
    ``fn.failed``.
    """
    if contrast and system is None:
        raise ValueError("contrast=True needs system (the reward criteria)")
    if aggregation in ("step_min", "step_last") and step_separator is None:
        raise ValueError(f"aggregation={aggregation!r} needs step_separator")
    if isinstance(client, (RewardClient, AsyncRewardClient)):
        if client_kwargs:
            raise TypeError("client options go to the client you pass, not here")
        if asynchronous != isinstance(client, AsyncRewardClient):
            raise TypeError("asynchronous=True needs an AsyncRewardClient, False a RewardClient")
        given, base_url = client, None
    else:
        given, base_url = None, client
    cls = AsyncEndoRMRewardFunction if asynchronous else EndoRMRewardFunction
    options = dict(
        aggregation=aggregation,
        gamma=gamma,
        beta=beta,
        terminal=terminal,
        truncate=truncate,
        add_eos=add_eos,
        model=model,
        contrast=contrast,
        baseline_system=baseline_system,
    )
    return cls(
        given,
        base_url,
        client_kwargs,
        name,
        system,
        use_completion_ids,
        options,
        chunk_size,
        max_concurrency,
        step_separator,
        eos_token_id,
        unfinished_terminal,
    )
