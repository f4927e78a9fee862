"""Load-test configuration from ``ENDORM_LT_*`` environment variables.

The locustfile, the runner (``python -m loadtests.run``) and the benchmark share it.
Integer distributions are written as compact specs:

    fixed:N                      always N
    uniform:LO:HI                uniform integer in [LO, HI]
    choice:A,B,C                 one of the values, equally likely
    lognormal:MEDIAN:SIGMA[:LO:HI]
                                 round(MEDIAN * exp(SIGMA * z)), z ~ N(0, 1), clipped to [LO, HI]
                                 (LO defaults to 1, HI to unbounded): long-tailed, like real
                                 prompt and response lengths
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field, fields
from typing import Mapping

PREFIX = "ENDORM_LT_"


@dataclass(frozen=True)
class Dist:
    """An integer distribution parsed from a spec string (see the module docstring)."""

    kind: str
    params: tuple[float, ...]
    spec: str = ""

    @classmethod
    def parse(cls, spec: str) -> Dist:
        text = spec.strip()
        kind, _, rest = text.partition(":")
        kind = kind.lower()
        try:
            if kind == "fixed":
                params = (int(rest),)
                ok = params[0] >= 0
            elif kind == "uniform":
                lo, hi = (int(x) for x in rest.split(":"))
                params, ok = (lo, hi), 0 <= lo <= hi
            elif kind == "choice":
                params = tuple(int(x) for x in rest.split(",") if x.strip())
                ok = bool(params) and min(params) >= 0
            elif kind == "lognormal":
                parts = rest.split(":")
                median, sigma = float(parts[0]), float(parts[1])
                lo = int(parts[2]) if len(parts) > 2 else 1
                hi = int(parts[3]) if len(parts) > 3 else 2**31 - 1
                params, ok = (median, sigma, lo, hi), median > 0 and sigma >= 0 and 0 <= lo <= hi and len(parts) <= 4
            else:
                ok = False
        except (ValueError, IndexError):
            ok = False
        if not ok:
            raise ValueError(
                f"bad distribution {spec!r}: use fixed:N, uniform:LO:HI, choice:A,B,.. or lognormal:MEDIAN:SIGMA[:LO:HI]"
            )
        return cls(kind, tuple(params), text)

    def sample(self, rng: random.Random) -> int:
        p = self.params
        if self.kind == "fixed":
            return int(p[0])
        if self.kind == "uniform":
            return rng.randint(int(p[0]), int(p[1]))
        if self.kind == "choice":
            return int(rng.choice(p))
        median, sigma, lo, hi = p
        return int(min(hi, max(lo, round(median * math.exp(sigma * rng.gauss(0.0, 1.0))))))

    @property
    def upper(self) -> int:
        """Largest value the distribution can produce (the clip bound for lognormal)."""
        p = self.params
        if self.kind == "fixed":
            return int(p[0])
        if self.kind == "uniform":
            return int(p[1])
        if self.kind == "choice":
            return int(max(p))
        return int(p[3])

    def __str__(self) -> str:
        return self.spec or self.kind


def _opt_float(value: str | None) -> float | None:
    if value is None or value.strip() == "" or value.strip().lower() == "none":
        return None
    return float(value)


@dataclass(frozen=True)
class LoadConfig:
    """Everything the locustfile reads from the environment (``ENDORM_LT_<FIELD>``)."""

    # what a request looks like
    api_key: str = ""
    input: str = "ids"  # ids | text | mixed: token ids (exact lengths) or text (realistic tokenization work)
    prompt_tokens: Dist = field(default_factory=lambda: Dist.parse("lognormal:256:0.6:16:2048"))
    response_tokens: Dist = field(default_factory=lambda: Dist.parse("lognormal:128:0.7:4:1024"))
    batch: Dist = field(default_factory=lambda: Dist.parse("choice:1,4,8,16"))  # items per /score
    compare_n: Dist = field(default_factory=lambda: Dist.parse("choice:2,4,8"))  # responses per /compare
    return_tokens: float = 0.25  # share of requests asking for per-token output
    score_weight: int = 3
    compare_weight: int = 1
    seed: int = 0
    vocab_size: int = 0  # 0: ask the server (GET /v1/models)
    max_model_len: int = 0  # 0: ask the server
    max_items: int = 64  # cap on items per request (the server's --max-items-per-request may be lower)
    # how users behave
    wait: str = "none"  # none | constant:S | between:A:B | pacing:S (one request every S seconds per user)
    honor_retry_after: bool = True
    timeout_s: float = 120.0
    iterations: int = 0  # requests per user, then the run ends when every user is done; 0: the run time decides
    # load shape: none (use -u/-r/-t) | ramp | step | spike; see loadtests/shapes.py
    shape: str = "none"
    steps: str = "1,2,4,8"  # step: user counts, one per step
    step_s: float = 10.0  # step: seconds per step
    ramp_users: int = 8  # ramp: users at the top
    ramp_s: float = 30.0  # ramp: seconds to go 0 -> ramp_users
    hold_s: float = 10.0  # ramp: seconds at the top
    base_users: int = 2  # spike: users before and after
    spike_users: int = 16  # spike: users during
    spike_at_s: float = 10.0
    spike_s: float = 10.0
    after_s: float = 10.0
    spawn_rate: float = 100.0
    # pass/fail thresholds (None: not checked)
    max_fail_ratio: float | None = 0.01  # failures (errors, not 429/503) / requests
    max_reject_ratio: float | None = None  # 429/503 / requests
    max_p95_ms: float | None = None
    max_p99_ms: float | None = None
    min_requests: int = 1
    # outputs
    request_log: str = ""  # JSONL, one line per request (the benchmark's latency curve reads it)
    summary_json: str = ""  # the summary and threshold verdict as JSON

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadConfig:
        env = os.environ if env is None else env
        kwargs: dict = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            default = f.default if f.default is not None else None
            if f.name in ("prompt_tokens", "response_tokens", "batch", "compare_n"):
                kwargs[f.name] = Dist.parse(raw)
            elif f.name.startswith(("max_fail", "max_reject", "max_p")):
                kwargs[f.name] = _opt_float(raw)
            elif isinstance(default, bool):
                kwargs[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                kwargs[f.name] = int(raw)
            elif isinstance(default, float):
                kwargs[f.name] = float(raw)
            else:
                kwargs[f.name] = raw
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.input not in ("ids", "text", "mixed"):
            raise ValueError(f"{PREFIX}INPUT must be ids, text or mixed, got {self.input!r}")
        if self.shape not in ("none", "ramp", "step", "spike"):
            raise ValueError(f"{PREFIX}SHAPE must be none, ramp, step or spike, got {self.shape!r}")
        if not 0.0 <= self.return_tokens <= 1.0:
            raise ValueError(f"{PREFIX}RETURN_TOKENS is a probability in [0, 1]")
        if self.score_weight < 0 or self.compare_weight < 0 or self.score_weight + self.compare_weight == 0:
            raise ValueError("task weights must be >= 0 and not both 0")
        if self.iterations < 0:
            raise ValueError(f"{PREFIX}ITERATIONS must be >= 0")
        parse_wait(self.wait)
        step_users(self.steps)

    def env(self) -> dict[str, str]:
        """The ``ENDORM_LT_*`` variables that reproduce this config (for a locust subprocess)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[PREFIX + f.name.upper()] = (
                "none" if value is None else str(int(value) if isinstance(value, bool) else value)
            )
        return out


def parse_wait(spec: str) -> tuple[str, tuple[float, ...]]:
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    try:
        nums = tuple(float(x) for x in rest.split(":")) if rest else ()
    except ValueError:
        nums = (-1.0,)
    expected = {"none": 0, "constant": 1, "pacing": 1, "between": 2}
    if kind not in expected or len(nums) != expected[kind] or any(x < 0 for x in nums):
        raise ValueError(f"bad wait {spec!r}: use none, constant:S, pacing:S or between:A:B")
    return kind, nums


def step_users(spec: str) -> list[int]:
    try:
        users = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        users = []
    if not users or min(users) < 0:
        raise ValueError(f"bad steps {spec!r}: comma-separated user counts, e.g. 1,2,4,8")
    return users


def schedule(cfg: LoadConfig) -> list[tuple[float, float, int]]:
    """[(start_s, end_s, users)] segments of the configured shape (ramp: the target at each second)."""
    if cfg.shape == "step":
        return [(i * cfg.step_s, (i + 1) * cfg.step_s, u) for i, u in enumerate(step_users(cfg.steps))]
    if cfg.shape == "spike":
        a = cfg.spike_at_s
        b = a + cfg.spike_s
        return [(0.0, a, cfg.base_users), (a, b, cfg.spike_users), (b, b + cfg.after_s, cfg.base_users)]
    if cfg.shape == "ramp":
        segs = []
        n = max(1, int(cfg.ramp_s))
        for i in range(n):
            segs.append((i * cfg.ramp_s / n, (i + 1) * cfg.ramp_s / n, max(1, round(cfg.ramp_users * (i + 1) / n))))
        segs.append((cfg.ramp_s, cfg.ramp_s + cfg.hold_s, cfg.ramp_users))
        return segs
    return []


def users_at(segments: list[tuple[float, float, int]], t: float) -> int | None:
    for start, end, users in segments:
        if start <= t < end:
            return users
    return None
