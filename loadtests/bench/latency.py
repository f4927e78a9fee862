"""Latency vs offered load: a locust step run against the benchmark server, cut into steps.

Each user sends one /score request every ``pacing`` seconds (``constant_pacing``),
so a step of U users offers U / pacing requests per second as long as the service
keeps up; 429s come back at once, so users keep their pace past the knee and the
offered load stays what the step says. Per step (after a settling period) the
analysis gives p50/p95/p99 of accepted requests, goodput (accepted requests and
tokens per second), and the 429/503 share. Capacity is the best goodput of any
step; the knee is the highest step whose offered load is within capacity (with
under 1 % rejected). Past it queues build up until the admission limit
(``max_inflight_tokens``) is reached, then the excess is turned away with 429 and
accepted requests' latency stays bounded by about
``queue_timeout + max_inflight_tokens / capacity``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from loadtests.config import PREFIX, LoadConfig, schedule

LOCUSTFILE = Path(__file__).resolve().parents[1] / "locustfile.py"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Step:
    users: int
    offered_rps: float
    start_s: float
    end_s: float
    accepted: int
    failed: int
    rejected: int
    attempted_rps: float  # requests started per second (closed-loop users fall below offered when slow)
    goodput_rps: float
    goodput_tokens_per_s: float
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None

    @property
    def reject_ratio(self) -> float:
        total = self.accepted + self.failed + self.rejected
        return self.rejected / total if total else 0.0


def step_config(
    *,
    steps: str,
    step_s: float,
    pacing_s: float,
    prompt_len: int,
    response_len: int,
    api_key: str,
    log: Path,
    summary: Path,
) -> LoadConfig:
    env = {
        PREFIX + "SHAPE": "step",
        PREFIX + "STEPS": steps,
        PREFIX + "STEP_S": str(step_s),
        PREFIX + "WAIT": f"pacing:{pacing_s}",
        PREFIX + "API_KEY": api_key,
        PREFIX + "PROMPT_TOKENS": f"fixed:{prompt_len}",
        PREFIX + "RESPONSE_TOKENS": f"fixed:{response_len}",
        PREFIX + "BATCH": "fixed:1",
        PREFIX + "RETURN_TOKENS": "0",
        PREFIX + "COMPARE_WEIGHT": "0",
        PREFIX + "INPUT": "ids",
        PREFIX + "REQUEST_LOG": str(log),
        PREFIX + "SUMMARY_JSON": str(summary),
        PREFIX + "MAX_FAIL_RATIO": "none",
        PREFIX + "HONOR_RETRY_AFTER": "0",
    }
    return LoadConfig.from_env(env)


def run_locust(cfg: LoadConfig, host: str, out_prefix: Path) -> int:
    env = {
        **os.environ,
        **cfg.env(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        host,
        "--headless",
        "--only-summary",
        "--csv",
        str(out_prefix),
        "--html",
        str(out_prefix) + ".html",
        "--stop-timeout",
        "30",
        "--loglevel",
        "WARNING",
    ]
    duration = schedule(cfg)[-1][1]
    with open(str(out_prefix) + ".log", "wb") as logf:  # stdin: see loadtests/run.py
        return subprocess.run(
            cmd, env=env, timeout=duration + 120, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT
        ).returncode


def analyse(log: Path, cfg: LoadConfig, *, pacing_s: float, settle_s: float = 4.0) -> list[Step]:
    """Per-step statistics from the per-request log of a step run."""
    t0 = None
    reqs = []
    for line in Path(log).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "test_start":
            t0 = rec["t"] if t0 is None else t0
        elif rec.get("event") == "request":
            reqs.append(rec)
    if t0 is None:
        t0 = min((r["t"] for r in reqs), default=0.0)
    out = []
    for start, end, users in schedule(cfg):
        lo = start + min(settle_s, (end - start) / 3)
        window = [r for r in reqs if lo <= r["t"] - t0 < end]
        done = [r for r in reqs if r["ok"] and lo <= r["t"] + r["ms"] / 1000 - t0 < end]
        lat = np.array([r["ms"] / 1000 for r in window if r["ok"]])
        span = end - lo

        def pct(q):
            return float(np.percentile(lat, q)) if lat.size else None  # noqa: B023 (called within this iteration)

        out.append(
            Step(
                users=users,
                offered_rps=users / pacing_s,
                start_s=lo,
                end_s=end,
                accepted=int(lat.size),
                failed=sum(1 for r in window if not r["ok"] and not r["rejected"]),
                rejected=sum(1 for r in window if r["rejected"]),
                attempted_rps=len(window) / span,
                goodput_rps=len(done) / span,
                goodput_tokens_per_s=sum(r["tokens"] for r in done) / span,
                p50_s=pct(50),
                p95_s=pct(95),
                p99_s=pct(99),
                max_s=float(lat.max()) if lat.size else None,
            )
        )
    return out


def knee(steps: list[Step], *, max_reject: float = 0.01) -> int | None:
    """Index of the highest step whose offered load the service sustains: offered <= capacity (the best
    goodput of any step) with under 1 % rejected. None: even the first step is past capacity."""
    capacity = max((s.goodput_rps for s in steps), default=0.0)
    last = None
    for i, s in enumerate(steps):
        if s.offered_rps <= capacity and s.reject_ratio <= max_reject:
            last = i
    return last


def derive(lat: dict) -> dict:
    """Knee, capacity and the p99 checks from a latency result's steps and settings (recomputable from JSON)."""
    names = {f.name for f in fields(Step)}
    steps = [Step(**{k: v for k, v in d.items() if k in names}) for d in lat["steps"]]
    k = knee(steps)
    cap_tps = max((s.goodput_tokens_per_s for s in steps), default=0.0)
    # Admitted: wait <= queue_timeout, then every token in flight ahead of it, plus the engine step already
    # scheduled when it arrived (the engine works in steps of max_num_batched_tokens).
    bound = (
        lat["queue_timeout_s"] + (lat["max_inflight_tokens"] + lat["engine_step_tokens"]) / cap_tps if cap_tps else None
    )
    past = steps[k + 1 :] if k is not None else steps
    # Steps whose users want more tokens in flight than the admission limit lets in.
    limited = [s for s in steps if s.users * lat["tokens_per_request"] > lat["max_inflight_tokens"] and s.p99_s]
    return {
        **lat,
        "knee_index": k,
        "knee_offered_rps": steps[k].offered_rps if k is not None else None,
        "capacity_rps": max((s.goodput_rps for s in steps), default=0.0),
        "capacity_tokens_per_s": cap_tps,
        "p99_bound_s": bound,
        "worst_p99_past_knee_s": max((s.p99_s for s in past if s.p99_s is not None), default=None),
        "p99_growth_past_limit": limited[-1].p99_s / limited[0].p99_s if len(limited) >= 2 else None,
        "limited_offered_rps": [limited[0].offered_rps, limited[-1].offered_rps] if len(limited) >= 2 else None,
    }


def steps_as_dicts(steps: list[Step]) -> list[dict]:
    return [{**asdict(s), "reject_ratio": s.reject_ratio} for s in steps]
