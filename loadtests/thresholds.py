"""Pass/fail thresholds of a load test, and the summary the runner prints.

Rejections (429 overloaded, 503 draining/not ready, both with Retry-After) are the
service doing its job under overload: they are counted apart from failures
(errors, timeouts, bad bodies) and have their own optional threshold.
Latency percentiles are over accepted requests only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from loadtests.config import PREFIX, LoadConfig

REJECTED = "REJECTED"  # locust request_type of 429/503 answers


@dataclass
class Summary:
    requests: int  # accepted + failed (rejections excluded)
    failures: int
    rejected: int
    rejected_429: int
    rejected_503: int
    duration_s: float
    rps: float  # accepted (non-failed) requests per second
    tokens_per_s: float  # engine tokens of accepted requests per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @property
    def fail_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def reject_ratio(self) -> float:
        total = self.requests + self.rejected
        return self.rejected / total if total else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "fail_ratio": self.fail_ratio, "reject_ratio": self.reject_ratio}

    def describe(self) -> str:
        def ms(x):
            return "n/a" if x is None else f"{x:.0f} ms"

        return "\n".join(
            [
                f"requests  {self.requests} accepted-or-failed, {self.failures} failed ({self.fail_ratio:.2%}), "
                f"{self.rejected} rejected: {self.rejected_429} x 429, {self.rejected_503} x 503 ({self.reject_ratio:.2%})",
                f"rate      {self.rps:.2f} req/s, {self.tokens_per_s:.0f} tokens/s over {self.duration_s:.1f} s",
                f"latency   p50 {ms(self.p50_ms)}, p95 {ms(self.p95_ms)}, p99 {ms(self.p99_ms)}, max {ms(self.max_ms)}",
            ]
        )


def violations(cfg: LoadConfig, s: Summary) -> list[str]:
    """Threshold breaches, each as a readable line (empty: the run passes)."""
    out = []
    if s.requests + s.rejected < cfg.min_requests:
        out.append(f"only {s.requests + s.rejected} requests, expected at least {cfg.min_requests}")
    if cfg.max_fail_ratio is not None and s.fail_ratio > cfg.max_fail_ratio:
        out.append(f"failure ratio {s.fail_ratio:.4f} > {PREFIX}MAX_FAIL_RATIO={cfg.max_fail_ratio}")
    if cfg.max_reject_ratio is not None and s.reject_ratio > cfg.max_reject_ratio:
        out.append(f"429/503 ratio {s.reject_ratio:.4f} > {PREFIX}MAX_REJECT_RATIO={cfg.max_reject_ratio}")
    for name, value, limit in (("p95", s.p95_ms, cfg.max_p95_ms), ("p99", s.p99_ms, cfg.max_p99_ms)):
        if limit is not None and value is not None and value > limit:
            out.append(f"{name} {value:.0f} ms > {PREFIX}MAX_{name.upper()}_MS={limit:g}")
    return out
