"""Reward functions for the GRPO arms, in TRL's reward-function form.

An *arm* is the reward the policy is trained on. Every run also computes the others it
can afford as *monitors* (TRL reward weight 0: logged, no effect on the advantage), so
each training curve shows the endogenous reward and the task accuracy of the samples
whatever the arm optimises.

* ``endorm-sum``, ``endorm-mean``, ``endorm-discounted``: the endogenous reward of the
  frozen model behind ``endorm serve``, through the SDK's TRL reward function, scoring
  TRL's exact completion ids (policy and reward model share the tokenizer, so the EOS
  token is scored exactly when the policy generated it).
* ``random``: N(0, 1) per completion, the drift baseline: GRPO's update with advantages
  that carry no information.
* ``exact-match``: 1 for a correct answer, else 0 (the task's verifier): what this GRPO
  setup can reach with a reward that knows the answer.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from task import in_words, is_correct

from endorm_client.integrations.trl import make_reward_function
from endorm_server.evaluation.demo_task import SYSTEM_PROMPTS

__all__ = ["ARMS", "ENDORM_ARMS", "reward_functions"]

ENDORM_ARMS = {
    "endorm-sum": {"aggregation": "sum"},
    "endorm-mean": {"aggregation": "mean"},
    "endorm-discounted": {"aggregation": "discounted", "gamma": 0.95},
}
# Criteria arms (issue 20): the policy is prompted without a style (--train-styles none); the reward carries the
# style as its criteria, raw (r under the criteria) or as the contrast r(criteria) - r(no system).
CRITERIA = SYSTEM_PROMPTS["words"]  # "Answer with the number in words only."
CRITERIA_ARMS = {
    "criteria-raw-words": {"aggregation": "sum", "system": CRITERIA},
    "criteria-contrast-words": {"aggregation": "sum", "system": CRITERIA, "contrast": True},
}
ARMS = (*ENDORM_ARMS, *CRITERIA_ARMS, "random", "exact-match")

RewardFn = Callable[..., list[float]]


def _exact_match(prompts: list, completions: list, answer: list[int], style: list[str], **_: Any) -> list[float]:
    return [float(is_correct(c[0]["content"], a, s)) for c, a, s in zip(completions, answer, style)]


def _words_share(prompts: list, completions: list, **_: Any) -> list[float]:
    """Monitor: 1 if the completion's final answer is written in words (the criteria arms' target style)."""
    return [float(in_words(c[0]["content"])) for c in completions]


def _random(seed: int) -> RewardFn:
    rng = random.Random(seed)

    def random_reward(prompts: list, completions: list, **_: Any) -> list[float]:
        return [rng.gauss(0.0, 1.0) for _ in completions]

    return random_reward


def _endorm(arm: str, server_url: str, api_key: str | None) -> RewardFn:
    return make_reward_function(
        server_url, api_key=api_key, name=arm.replace("-", "_"), use_completion_ids=True, **ENDORM_ARMS[arm]
    )


def reward_functions(
    arm: str, *, server_url: str, api_key: str | None, seed: int
) -> tuple[list[RewardFn], list[float]]:
    """(reward functions, TRL reward weights): the arm's reward with weight 1, then the
    monitors ``endorm-sum`` and ``exact-match`` with weight 0 (when not the arm)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    exact = _exact_match
    exact.__name__ = "exact_match"
    if arm in ENDORM_ARMS:
        trained = _endorm(arm, server_url, api_key)
    elif arm in CRITERIA_ARMS:
        trained = make_reward_function(
            server_url, api_key=api_key, name=arm.replace("-", "_"), use_completion_ids=True, **CRITERIA_ARMS[arm]
        )
    elif arm == "random":
        trained = _random(seed)
    else:
        trained = exact
    funcs, weights = [trained], [1.0]
    if arm != "endorm-sum":
        funcs.append(_endorm("endorm-sum", server_url, api_key))
        weights.append(0.0)
    if arm != "exact-match":
        funcs.append(exact)
        weights.append(0.0)
    if arm in CRITERIA_ARMS:
        funcs.append(_words_share)
        weights.append(0.0)
    return funcs, weights
