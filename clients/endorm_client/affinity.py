"""Keep a group's sequences where its prompt is cached.

The server computes a prompt shared by the items of one request once (the
prefix cache of the replica that serves it). So the batch helpers never split a
run of consecutive items with the same prompt across requests, and with several
replicas a request goes to the replica chosen by a hash of its first prompt
(rendezvous hashing: the choice moves only when that replica is down).

Every request that has a prompt also carries the key in the ``X-EndoRM-Affinity`` header, so
a proxy in front of several replicas (HAProxy ``balance hdr(...)`` with consistent hashing,
Envoy Gateway's header hash) keeps a group on one replica for callers of one URL too.
Without the SDK, any value equal across a group's requests works; the SDK's value is
``sha256(json.dumps(prompt_fields, sort_keys=True))[:16]`` (see ``prompt_key``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

PROMPT_FIELDS = ("prompt", "messages", "prompt_ids", "system")
AFFINITY_HEADER = "X-EndoRM-Affinity"


def prompt_key(item: dict[str, Any]) -> str:
    """A stable hash of an item's prompt part (the fields that are not the response): the first
    16 hex digits of SHA-256 over ``json.dumps`` (default separators, ``sort_keys=True``) of the
    item's non-null ``prompt``, ``messages``, ``prompt_ids`` and ``system`` fields."""
    part = {k: item.get(k) for k in PROMPT_FIELDS if item.get(k) is not None}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rank(key: str, urls: Sequence[str]) -> list[str]:
    """Replicas in rendezvous-hash order for ``key`` (the first is the preferred one)."""
    return sorted(urls, key=lambda u: hashlib.sha256(f"{key}|{u}".encode()).digest(), reverse=True)


def group_chunks(keys: Sequence[str], size: int) -> list[tuple[int, int]]:
    """[start, end) ranges of at most ``size`` items that do not split a run of equal keys
    (a run longer than ``size`` is split into pieces of ``size``)."""
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            runs += [(a, min(a + size, i)) for a in range(start, i, size)]
            start = i
    out: list[tuple[int, int]] = []
    for a, b in runs:
        if out and b - out[-1][0] <= size:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out
