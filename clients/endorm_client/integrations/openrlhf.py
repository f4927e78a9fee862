"""OpenRLHF adapter.

OpenRLHF can call the server directly: ``--remote_rm_url http://rm:8000/get_reward`` (the
server speaks OpenRLHF's remote reward-model protocol). Its built-in HTTP client sends no
API key and retries blindly; for auth, retries with backoff, failover over replicas and
batches split to the server's limits, point OpenRLHF at a reward-function file instead:

    # endorm_reward.py
    from endorm_client.integrations.openrlhf import reward_func   # reads ENDORM_BASE_URL, ENDORM_API_KEY

    openrlhf.cli.train_ppo_ray ... --remote_rm_url endorm_reward.py

``reward_func(queries, prompts, labels)`` posts to ``/get_reward`` and returns OpenRLHF's
reward dict ``{"rewards", "scores", "extra_logs"}`` as torch tensors (what
``update_samples_with_rewards`` concatenates). Options: ``ENDORM_AGGREGATION``,
``ENDORM_GAMMA``, ``ENDORM_BETA``, ``ENDORM_TERMINAL`` environment variables, or build your
own with :func:`make_reward_func`.

Requests go with ``item_errors=report``: a query the server cannot score gets ``fallback`` (default
0.0, ``ENDORM_FALLBACK``) as its reward, is logged and counted (``reward_func.failed``; the
``endorm_item_failed`` extra log is 1.0 on it), and the others are scored as if sent alone.

Cut-off rollouts: OpenRLHF decodes each query with its special tokens, so a finished one ends with
the policy's end-of-sequence text. With ``eos_text`` (``ENDORM_EOS_TEXT``, e.g. ``"<|im_end|>"``), a
query that does not end with it was cut off by the length limit and is scored with
``terminal=bootstrap`` (``unfinished_terminal``; None keeps the request's ``terminal``). /get_reward
takes its options per request, so the cut-off queries go in requests of their own.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Sequence, cast

from endorm_client.affinity import prompt_key
from endorm_client.client import RewardClient
from endorm_client.integrations._outcomes import DEFAULT_UNFINISHED_TERMINAL, FailedItems

__all__ = ["make_reward_func", "reward_func", "get_rewards"]

_OPTIONS = ("aggregation", "gamma", "beta", "terminal", "truncate", "add_eos", "step_separator")


def get_rewards(
    client: RewardClient,
    queries: Sequence[str],
    prompts: Sequence[str] | None = None,
    labels: Sequence[Any] | None = None,
    *,
    chunk_size: int | None = None,
    max_concurrency: int | None = None,
    fallback: float = 0.0,
    eos_text: str | None = None,
    unfinished_terminal: str | None = DEFAULT_UNFINISHED_TERMINAL,
    failed: FailedItems | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``POST /get_reward`` in chunks; returns ``{"rewards": [...], "scores": [...], "extra_logs": {k: [...]},
    "errors": [{"index", "code", "message", ...}]}``: a query that could not be scored has reward and
    score ``fallback`` and ``extra_logs["endorm_item_failed"]`` 1.0. With ``eos_text``, a query that
    does not end with it (cut off) is scored with ``terminal=unfinished_terminal``."""
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"unknown /get_reward options: {sorted(unknown)}")
    params = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items() if v is not None}
    params["item_errors"] = "report"
    n = len(queries)
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} queries")
    labels = list(labels) if labels is not None else None
    failed = failed if failed is not None else FailedItems("openrlhf")
    cut = {i for i in range(n) if eos_text and not queries[i].endswith(eos_text)} if unfinished_terminal else set()
    groups = [
        (idx, p)
        for idx, p in (
            ([i for i in range(n) if i not in cut], params),
            (sorted(cut), {**params, "terminal": str(unfinished_terminal)}),
        )
        if idx
    ]
    rows: list[tuple[float, float, dict, dict | None]] = [(fallback, fallback, {}, None)] * n
    for idx, p in groups:
        for i, row in zip(idx, _get(client, queries, prompts, labels, idx, p, chunk_size, max_concurrency)):
            rows[i] = row
    errors = []
    for i, (_, _, _, error) in enumerate(rows):
        if error is not None:
            failed.record(i, error.get("code", "error"), error.get("message", ""), fallback)
            errors.append({**error, "index": i})
    keys = sorted({k for r in rows for k in r[2]})
    return {
        "rewards": [fallback if r[3] is not None else r[0] for r in rows],
        "scores": [fallback if r[3] is not None else r[1] for r in rows],
        "extra_logs": {
            **{k: [r[2].get(k, 0.0) for r in rows] for k in keys},
            "endorm_item_failed": [1.0 if r[3] is not None else 0.0 for r in rows],
        },
        "errors": errors,
    }


def _get(
    client: RewardClient,
    queries: Sequence[str],
    prompts: Sequence[str] | None,
    labels: list | None,
    order: list[int],
    params: dict[str, str],
    chunk_size: int | None,
    max_concurrency: int | None,
) -> list[tuple[float, float, dict, dict | None]]:
    """(reward, score, extra logs, error or None) of each query in ``order``."""

    def send(idx: list[int]) -> list[tuple[float, float, dict, dict | None]]:
        body: dict[str, Any] = {"query": [queries[i] for i in idx]}
        if prompts is not None:
            body["prompts"] = [prompts[i] for i in idx]
        if labels is not None:
            body["labels"] = [labels[i] for i in idx]
        affinity = client._affinity([{"prompt": prompts[idx[0]]}]) if prompts is not None and idx else None
        out = client.request("POST", "/get_reward", json=body, params=params, affinity=affinity).json()
        logs = out.get("extra_logs") or {}
        errors = {e["index"]: {k: v for k, v in e.items() if k != "index"} for e in out.get("errors") or []}
        return [
            (
                out["rewards"][j],
                out.get("scores", out["rewards"])[j],
                {k: v[j] for k, v in logs.items()},
                errors.get(j),
            )
            for j in range(len(idx))
        ]

    # a group stays in one request
    keys = [prompt_key({"prompt": prompts[i]}) for i in order] if prompts is not None else None
    return client.map_chunks(order, send, chunk_size=chunk_size, max_concurrency=max_concurrency, keys=keys)


def _tensors(out: dict[str, Any]) -> dict[str, Any]:
    import torch  # OpenRLHF runs with torch; imported only here

    t = lambda xs: torch.tensor(xs, dtype=torch.float32)  # noqa: E731
    return {
        "rewards": t(out["rewards"]),
        "scores": t(out["scores"]),
        "extra_logs": {k: t(v) for k, v in out["extra_logs"].items()},
    }


def make_reward_func(
    client: RewardClient | str | Sequence[str] | None = None,
    *,
    return_tensors: bool = True,
    chunk_size: int | None = None,
    max_concurrency: int | None = None,
    aggregation: str | None = None,
    gamma: float | None = None,
    beta: float | None = None,
    terminal: str | None = None,
    truncate: bool | None = None,
    add_eos: bool | None = None,
    step_separator: str | None = None,
    fallback: float = 0.0,
    eos_text: str | None = None,
    unfinished_terminal: str | None = DEFAULT_UNFINISHED_TERMINAL,
    **client_kwargs: Any,
) -> Callable[..., dict[str, Any]]:
    """An OpenRLHF ``reward_func(queries, prompts, labels)`` backed by the server.

    client: a ``RewardClient``, or base URL(s) (None: ``ENDORM_BASE_URL``) with
    ``client_kwargs`` (``api_key``, timeouts, retries...); the client is built lazily in the
    process that calls the function (OpenRLHF runs it in Ray workers).
    step_separator: score each response as steps split after this text (a response without it is
    one step); with ``aggregation="step_min"`` / ``"step_last"`` the reward is the weakest / last step's.
    fallback: the reward of a query the server could not score (logged; counted in ``reward_func.failed``).
    eos_text: the policy's end-of-sequence text: a query not ending with it was cut off and is scored
    with ``terminal=unfinished_terminal`` (default bootstrap; None: the request's terminal).
    """
    if aggregation in ("step_min", "step_last") and step_separator is None:
        raise ValueError(f"aggregation={aggregation!r} needs step_separator")
    options = dict(
        aggregation=aggregation,
        gamma=gamma,
        beta=beta,
        terminal=terminal,
        truncate=truncate,
        add_eos=add_eos,
        step_separator=step_separator,
    )
    state: dict[str, Any] = {"client": client if isinstance(client, RewardClient) else None}
    lock = threading.Lock()
    failed = FailedItems("openrlhf")

    def reward_func(
        queries: Sequence[str], prompts: Sequence[str] | None = None, labels: Sequence[Any] | None = None, **_: Any
    ) -> dict[str, Any]:
        with lock:
            if state["client"] is None:
                state["client"] = RewardClient(cast("str | Sequence[str] | None", client), **client_kwargs)
        out = get_rewards(
            state["client"],
            queries,
            prompts,
            labels,
            chunk_size=chunk_size,
            max_concurrency=max_concurrency,
            fallback=fallback,
            eos_text=eos_text,
            unfinished_terminal=unfinished_terminal,
            failed=failed,
            **options,
        )
        return _tensors(out) if return_tensors else out

    reward_func.failed = failed  # type: ignore[attr-defined]
    return reward_func


def _env_float(name: str) -> float | None:
    v = os.environ.get(name)
    return float(v) if v else None


def _env_text(name: str) -> str | None:
    """An environment text with backslash escapes (``ENDORM_STEP_SEPARATOR='\\n\\n'``)."""
    v = os.environ.get(name)
    return v.encode("latin-1", "backslashreplace").decode("unicode_escape") if v else None


_default: Callable[..., dict[str, Any]] | None = None


def reward_func(
    queries: Sequence[str], prompts: Sequence[str] | None = None, labels: Sequence[Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """OpenRLHF's custom reward function, configured from the environment:
    ``ENDORM_BASE_URL`` (comma-separated replicas), ``ENDORM_API_KEY``, ``ENDORM_AGGREGATION``,
    ``ENDORM_GAMMA``, ``ENDORM_BETA``, ``ENDORM_TERMINAL``, ``ENDORM_STEP_SEPARATOR`` (escapes as ``\n``),
    ``ENDORM_FALLBACK``, ``ENDORM_EOS_TEXT``, ``ENDORM_UNFINISHED_TERMINAL`` (empty: the request's)."""
    global _default
    if _default is None:
        _default = make_reward_func(
            None,
            aggregation=os.environ.get("ENDORM_AGGREGATION") or None,
            gamma=_env_float("ENDORM_GAMMA"),
            beta=_env_float("ENDORM_BETA"),
            terminal=os.environ.get("ENDORM_TERMINAL") or None,
            step_separator=_env_text("ENDORM_STEP_SEPARATOR"),
            fallback=_env_float("ENDORM_FALLBACK") or 0.0,
            eos_text=_env_text("ENDORM_EOS_TEXT"),
            unfinished_terminal=os.environ.get("ENDORM_UNFINISHED_TERMINAL", DEFAULT_UNFINISHED_TERMINAL) or None,
        )
    return _default(queries, prompts, labels, **kwargs)
