"""Client-side step splitting for trainer adapters (the server's rule, service/endorm_server/scoring/steps.py).

The response is split after each occurrence of the separator (kept with the step it ends;
no empty trailing step). Unlike the server's ``step_separator`` (an absent separator is a
422 there), an answer without the separator is one step: a policy's sample must never
fail a training batch.
"""

from __future__ import annotations

__all__ = ["split_steps"]


def split_steps(text: str, separator: str) -> list[str]:
    if not separator:
        raise ValueError("step_separator must be a non-empty string")
    parts = text.split(separator)
    steps = [p + separator for p in parts[:-1]]
    if parts[-1] or not steps:
        steps.append(parts[-1])
    return steps
