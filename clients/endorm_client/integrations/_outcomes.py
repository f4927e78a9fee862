"""What the trainer adapters share: which rollouts were cut off, and what a failed item becomes.

A rollout cut off by the length limit is not a finished answer: the adapters read it from the
trainer's own data (the completion's last token is not an end-of-sequence id; OpenRLHF: the decoded
query does not end with the end-of-sequence text) and score it with ``terminal: "bootstrap"`` (its
value V(s_H) stands for the unseen rest) and without an appended end-of-turn token, unless told
otherwise (``unfinished_terminal=None`` keeps the request's terminal).

An item the server could not score (``item_errors: "report"``) becomes the trainer's convention: TRL's
``None`` (its GRPO trainer treats it as "not applicable"), or a configurable fallback reward for
OpenRLHF and verl; either way it is logged and counted here.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Iterable, Sequence

logger = logging.getLogger("endorm_client.integrations")

DEFAULT_UNFINISHED_TERMINAL = "bootstrap"


def eos_ids(eos_token_id: int | Iterable[int] | None) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset({eos_token_id})
    return frozenset(int(t) for t in eos_token_id)


def finished(ids: Sequence[int], eos: frozenset[int]) -> bool:
    """A completion ended by the policy (its last token an end-of-sequence id), as TRL's
    ``mask_truncated_completions`` and verl's rollout decide it."""
    return bool(ids) and int(ids[-1]) in eos


def unfinished_options(terminal: str | None, text: bool) -> dict[str, Any]:
    """Per-item options of a cut-off rollout: V(s_H) bootstrapped, no end-of-turn token appended."""
    out: dict[str, Any] = {}
    if terminal is not None:
        out["terminal"] = terminal
    if text:
        out["add_eos"] = False
    return out


class FailedItems:
    """Items that came back failed: counted (``total``, ``by_code``), each one logged."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self.total = 0
        self.by_code: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, index: int, code: str, message: str, replaced_by: Any) -> None:
        with self._lock:
            self.total += 1
            self.by_code[code] += 1
        logger.warning(
            "%s: item %d could not be scored (%s: %s); its reward is %r",
            self.adapter,
            index,
            code,
            message,
            replaced_by,
        )

    def __repr__(self) -> str:
        return f"FailedItems({self.adapter!r}, total={self.total}, by_code={dict(self.by_code)})"
