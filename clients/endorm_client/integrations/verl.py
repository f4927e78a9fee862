"""verl adapter.

The server answers vLLM's ``POST /classify`` as verl's reward loop sends it (``{"model",
"input", "activation": false}``, reward read from ``data[-1].probs[-1]``), so anything in
verl that talks to a vLLM reward-model server can talk to it. For a custom reward
function with auth, retries and failover (``custom_reward_function.path`` /
``custom_reward_function.name``):

    # endorm_verl.py
    from endorm_client.integrations.verl import make_compute_score
    compute_score = make_compute_score("http://rm:8000", prompt_key="question")   # async

verl passes ``data_source, solution_str, ground_truth, extra_info`` (and more keywords, which
are ignored); the prompt is taken from ``extra_info[prompt_key]`` (a string -> one user turn
when ``chat``, else raw text; or a list of messages), the response is ``solution_str``.

With ``system=CRITERIA, contrast=True`` the reward is the criteria contrast (docs/contrast.md):
r(x, criteria, y) - r(x, baseline, y), the part of the reward the criteria are responsible for.

A sample the server cannot score (``item_errors: "report"``) gets ``fallback`` (default 0.0), logged
and counted (``compute_score.failed``). verl hands a custom ``compute_score`` only the decoded text
(special tokens skipped), so it cannot tell a cut-off rollout from a finished one: a row-level
decision (``terminal: "bootstrap"`` for cut-off rows) needs the ``endorm`` reward manager
(``endorm_client.integrations.verl_reward``), which reads the token ids; or put
``extra_info["endorm_truncated"] = True`` on the sample.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, cast

from endorm_client.client import AsyncRewardClient, RewardClient
from endorm_client.integrations._outcomes import DEFAULT_UNFINISHED_TERMINAL, FailedItems, unfinished_options
from endorm_client.loop_clients import PerLoopClients
from endorm_client.types import ScoreResponse

__all__ = ["make_compute_score", "to_item"]


def to_item(
    solution_str: str, extra_info: dict | None, *, prompt_key: str, chat: bool, system: str | None
) -> dict[str, Any]:
    if not extra_info or prompt_key not in extra_info:
        raise KeyError(f"extra_info has no {prompt_key!r}: put the prompt there in your dataset, or set prompt_key")
    prompt = extra_info[prompt_key]
    if isinstance(prompt, str):
        item: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
    else:
        item = {"messages": [{"role": m["role"], "content": m["content"]} for m in prompt]}
    if system is not None:
        item["system"] = system
    item["response"] = solution_str
    return item


def _cut(extra_info: dict | None, terminal: str | None) -> dict[str, Any]:
    truncated = bool(extra_info and extra_info.get("endorm_truncated"))
    return unfinished_options(terminal, text=True) if truncated else {}


def make_compute_score(
    client: RewardClient | AsyncRewardClient | str | Sequence[str] | None = None,
    *,
    asynchronous: bool = True,
    prompt_key: str = "question",
    chat: bool = True,
    system: str | None = None,
    aggregation: str | None = None,
    gamma: float | None = None,
    beta: float | None = None,
    terminal: str | None = None,
    add_eos: bool | None = None,
    contrast: bool = False,
    baseline_system: str | None = None,
    fallback: float = 0.0,
    unfinished_terminal: str | None = DEFAULT_UNFINISHED_TERMINAL,
    **client_kwargs: Any,
) -> Callable[..., Any]:
    """A verl ``compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw) -> float``
    (an ``async def`` when ``asynchronous``, which verl's reward loop awaits). A sample that cannot
    be scored returns ``fallback`` (logged, counted in ``compute_score.failed``); one with
    ``extra_info["endorm_truncated"]`` is scored as cut off (``unfinished_terminal``, no end-of-turn)."""
    if contrast and (system is None or not chat):
        raise ValueError("contrast=True needs chat prompts and system=<the criteria> (scored against the baseline)")
    if baseline_system is not None and not contrast:
        raise ValueError("baseline_system is only used with contrast=True")
    options: dict[str, Any] = {
        k: v
        for k, v in dict(
            aggregation=aggregation,
            gamma=gamma,
            beta=beta,
            terminal=terminal,
            add_eos=add_eos,
            contrast=contrast or None,
            baseline_system=baseline_system,
        ).items()
        if v is not None
    }
    options["item_errors"] = "report"
    given = client if isinstance(client, (RewardClient, AsyncRewardClient)) else None
    state: dict[str, Any] = {"client": given}
    failed = FailedItems("verl")

    def reward(res: ScoreResponse) -> float:
        r = res.results[0]
        if r.score is None:
            for f in res.failures:
                failed.record(f.index, f.error.code, f.error.message, fallback)
            return float(fallback)
        return float(r.score)

    if asynchronous:
        # verl awaits this from its reward loop workers' loops: a client per loop, closed with it
        per_loop = PerLoopClients(lambda: AsyncRewardClient(client, **client_kwargs))  # type: ignore[arg-type]

        async def compute_score(
            data_source: Any = None,
            solution_str: str = "",
            ground_truth: Any = None,
            extra_info: dict | None = None,
            **_: Any,
        ) -> float:
            rm = given if isinstance(given, AsyncRewardClient) else await per_loop.get()
            item = to_item(solution_str, extra_info, prompt_key=prompt_key, chat=chat, system=system)
            item.update(_cut(extra_info, unfinished_terminal))
            return reward(await rm.score([item], **options))

        compute_score.failed = failed  # type: ignore[attr-defined]
        return compute_score

    def compute_score_sync(
        data_source: Any = None,
        solution_str: str = "",
        ground_truth: Any = None,
        extra_info: dict | None = None,
        **_: Any,
    ) -> float:
        if state["client"] is None:
            state["client"] = RewardClient(cast("str | Sequence[str] | None", client), **client_kwargs)
        item = to_item(solution_str, extra_info, prompt_key=prompt_key, chat=chat, system=system)
        item.update(_cut(extra_info, unfinished_terminal))
        return reward(state["client"].score([item], **options))

    compute_score_sync.failed = failed  # type: ignore[attr-defined]
    return compute_score_sync
