"""Place the reward model's per-token rewards on a trainer's own tokens (a different tokenizer).

The server returns, with ``return_tokens``, each response token's reward r_h and its
character span [a_h, b_h) in the response text. The trainer tokenizes the same text its own
way, spans [s_j, e_j). Each reward token is given, whole, to ONE trainer token:

    j(h) = the trainer token holding character b_h - 1 (the reward token's last character);
           a zero-width reward token at a_h (the appended end-of-turn token, a split
           character's other byte pieces) goes to the trainer token holding a_h, and at
           the end of the text to the last trainer token,
    R_j  = sum_{h : j(h) = j} r_h,        so   sum_j R_j = sum_h r_h   (the sequence ``sum``).

"Holding" character c means the first trainer token with e_j > c, so characters a trainer
tokenizer leaves out of its spans (trimmed spaces) still land on the next token.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Sequence

from endorm_client.types import ScoreResult

__all__ = ["map_rewards", "rewards_on_tokens", "tokenizer_offsets"]

Span = tuple[int, int]


def map_rewards(rewards: Sequence[float], offsets: Sequence[Span], trainer_offsets: Sequence[Span]) -> list[float]:
    """R_j for each trainer token from rewards r_h on spans ``offsets`` (see the module docstring)."""
    if len(rewards) != len(offsets):
        raise ValueError(f"{len(rewards)} rewards for {len(offsets)} offsets")
    if not trainer_offsets:
        raise ValueError("the trainer has no tokens to put the rewards on")
    ends = [int(e) for _, e in trainer_offsets]
    if any(x > y for x, y in zip(ends, ends[1:])):
        raise ValueError("trainer token offsets must be in text order")
    out = [0.0] * len(ends)
    for r, (a, b) in zip(rewards, offsets):
        c = b - 1 if b > a else a
        out[min(bisect_right(ends, c), len(ends) - 1)] += float(r)
    return out


def rewards_on_tokens(result: ScoreResult, trainer_offsets: Sequence[Span]) -> list[float]:
    """Per-trainer-token rewards of one ``/score`` result (asked with ``return_tokens=True``, text response)."""
    if not result.tokens:
        raise ValueError("the result has no tokens: score with return_tokens=True")
    if any(t.offset is None for t in result.tokens):
        raise ValueError("the result has no character offsets: they come with text responses")
    offsets = [t.offset for t in result.tokens if t.offset is not None]
    return map_rewards([t.reward for t in result.tokens], offsets, trainer_offsets)


def tokenizer_offsets(tokenizer: Any, text: str, ids: Sequence[int] | None = None) -> list[Span]:
    """Spans of a Hugging Face tokenizer's tokens of ``text`` (``ids``: check they are these tokens).

    From the fast tokenizer's offset mapping; without one, from incremental decoding
    (exact when the tokens decode back to ``text``).
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if ids is not None and list(enc["input_ids"]) != [int(i) for i in ids]:
            raise ValueError("ids are not the tokenizer's tokens of text")
        return [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    if ids is None:
        ids = tokenizer.encode(text, add_special_tokens=False)
    spans, prev = [], 0
    for k in range(1, len(ids) + 1):
        cur = len(tokenizer.decode(list(ids[:k]), skip_special_tokens=False, clean_up_tokenization_spaces=False))
        spans.append((prev, max(cur, prev)))
        prev = max(cur, prev)
    return spans
