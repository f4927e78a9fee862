"""Locust load test for EndoRM server: /score and /compare with realistic payload mixes.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 2 -t 60s \\
        --csv out/run --html out/run.html

or, with a local server started for you, ``python -m loadtests.run``. Configuration
is by ``ENDORM_LT_*`` environment variables (loadtests/config.py): payload
distributions (prompt/response lengths, items per request, responses per compare,
share of requests with per-token output), user pacing, the load shape
(``ENDORM_LT_SHAPE=ramp|step|spike``) and the pass/fail thresholds (failure ratio,
429/503 ratio, p95, p99), checked when locust quits: the exit code is 1 on a breach.

429/503 answers are reported under request type ``REJECTED`` (e.g. ``REJECTED
/score 429``), not as failures; users wait the Retry-After they carry.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import sys
import threading
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run by locust as a file: make `loadtests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gevent
from locust import FastHttpUser, between, constant, constant_pacing, events, task
from locust.exception import StopUser
from locust.runners import WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV, StatsEntry

from loadtests.config import LoadConfig, parse_wait
from loadtests.payloads import PayloadFactory, request_mix
from loadtests.shapes import SHAPES
from loadtests.thresholds import REJECTED, Summary, violations

CFG = LoadConfig.from_env()

if CFG.shape != "none":  # locust uses the first shape class in this module's namespace: expose one
    _shape = SHAPES[CFG.shape]
    globals()[_shape.__name__] = _shape


def _wait_time():
    kind, nums = parse_wait(CFG.wait)
    if kind == "constant":
        return constant(nums[0])
    if kind == "pacing":
        return constant_pacing(nums[0])
    if kind == "between":
        return between(nums[0], nums[1])
    return constant(0)


# ----------------------------------------------------------------- shared state

_info_lock = threading.Lock()
_info: dict = {}
_seeds = itertools.count()
_counters = {"tokens": 0, "items": 0, "rejected_429": 0, "rejected_503": 0}
_log_file = None
_environment = None
_users_done = 0  # users that sent their ENDORM_LT_ITERATIONS requests


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {CFG.api_key}"} if CFG.api_key else {}


def server_info(host: str) -> dict:
    """vocab_size and max_model_len of the served model (GET /v1/models, once per process)."""
    with _info_lock:
        if not _info:
            card: dict = {}
            if not (CFG.vocab_size and CFG.max_model_len):
                req = urllib.request.Request(host.rstrip("/") + "/v1/models", headers=_headers())
                with urllib.request.urlopen(req, timeout=30) as resp:
                    card = json.load(resp)["data"][0]
            _info["vocab_size"] = CFG.vocab_size or int(card["vocab_size"])
            _info["max_model_len"] = CFG.max_model_len or int(card["max_model_len"])
        return dict(_info)


@events.init.add_listener
def _on_init(environment, **_kw):
    global _environment, _log_file
    _environment = environment
    if CFG.request_log and not isinstance(environment.runner, WorkerRunner):
        Path(CFG.request_log).parent.mkdir(parents=True, exist_ok=True)
        _log_file = open(CFG.request_log, "w", buffering=1)


@events.test_start.add_listener
def _on_test_start(environment, **_kw):
    if _log_file is not None:  # the time origin of the load shape's schedule
        _log_file.write(json.dumps({"event": "test_start", "t": time.time()}) + "\n")


@events.request.add_listener
def _on_request(
    request_type,
    name,
    response_time,
    response_length,
    response=None,
    context=None,
    exception=None,
    start_time=None,
    **_kw,
):
    context = context or {}
    ok = exception is None
    if request_type == REJECTED:
        key = "rejected_503" if name.endswith("503") else "rejected_429"
        _counters[key] += 1
    elif ok and "tokens" in context:
        _counters["tokens"] += context["tokens"]
        _counters["items"] += context.get("items", 0)
    if _log_file is not None:
        runner = _environment.runner if _environment is not None else None
        _log_file.write(
            json.dumps(
                {
                    "event": "request",
                    "t": start_time,
                    "ms": round(response_time, 3),
                    "type": request_type,
                    "name": name,
                    "status": getattr(response, "status_code", None),
                    "ok": ok and request_type != REJECTED,
                    "rejected": request_type == REJECTED,
                    "tokens": context.get("tokens", 0),
                    "items": context.get("items", 0),
                    "users": runner.user_count if runner else None,
                }
            )
            + "\n"
        )


# ------------------------------------------------------------------------- user


class EndoRMUser(FastHttpUser):
    """Posts /score and /compare bodies drawn from the configured distributions."""

    wait_time = _wait_time()
    network_timeout = CFG.timeout_s
    connection_timeout = 10.0

    def on_start(self) -> None:
        info = server_info(self.host)
        number = next(_seeds)
        self.factory = PayloadFactory(
            CFG, vocab_size=info["vocab_size"], max_model_len=info["max_model_len"], seed=CFG.seed * 1_000_003 + number
        )
        self.mix = request_mix(CFG.score_weight, CFG.compare_weight, start=number)
        self.sent = 0
        kind, nums = parse_wait(CFG.wait)
        if kind == "pacing":  # de-synchronise users spawned together
            gevent.sleep(random.uniform(0, nums[0]))

    @task
    def next_request(self) -> None:
        if CFG.iterations and self.sent >= CFG.iterations:
            self._done()
        self.sent += 1
        kind = next(self.mix)
        self._post(self.factory.score() if kind == "score" else self.factory.compare())

    def _done(self) -> None:
        """This user sent its requests; the last one to finish ends the run (a run of a fixed size:
        its outcome does not depend on how many requests the machine gets through in a time)."""
        global _users_done
        _users_done += 1
        runner = self.environment.runner
        if runner is not None and _users_done >= runner.target_user_count:
            gevent.spawn(runner.quit)
        raise StopUser()

    def _post(self, payload) -> None:
        retry_after = 0.0
        with self.client.post(
            payload.path,
            json=payload.body,
            headers=_headers(),
            name=payload.path,
            catch_response=True,
            context={"tokens": payload.tokens, "items": payload.items},
        ) as resp:
            code = resp.status_code
            if code in (429, 503):
                resp.request_meta["request_type"] = REJECTED
                resp.request_meta["name"] = f"{payload.path} {code}"
                resp.success()
                try:
                    retry_after = float((resp.headers or {}).get("Retry-After") or 0)
                except ValueError:
                    retry_after = 0.0
            elif code == 200:
                problem = _check_body(payload, resp)
                if problem:
                    resp.failure(problem)
                else:
                    resp.success()
            else:
                text = (resp.text or "")[:200] if code else str(resp.error)
                resp.failure(f"HTTP {code}: {text}")
        if retry_after > 0 and CFG.honor_retry_after:
            gevent.sleep(retry_after)


def _check_body(payload, resp) -> str | None:
    try:
        data = resp.json()
    except Exception:  # noqa: BLE001 - any decoding problem is a failure
        return "response is not JSON"
    results = data.get("results")
    if not isinstance(results, list) or len(results) != payload.items:
        return f"expected {payload.items} results, got {len(results) if isinstance(results, list) else results!r}"
    if payload.path == "/compare" and sorted(data.get("ranking", [])) != list(range(payload.items)):
        return "ranking is not a permutation of the responses"
    return None


# -------------------------------------------------------------- summary, thresholds


def summarize(environment) -> Summary:
    stats = environment.stats
    accepted = StatsEntry(stats, "accepted", "", use_response_times_cache=False)
    for entry in stats.entries.values():
        if entry.method != REJECTED:
            accepted.extend(entry)
    total = stats.total
    end = total.last_request_timestamp or time.time()
    duration = max(1e-9, end - total.start_time)
    have = accepted.num_requests > 0

    def pct(p):
        return float(accepted.get_response_time_percentile(p)) if have else None

    return Summary(
        requests=accepted.num_requests,
        failures=accepted.num_failures,
        rejected=_counters["rejected_429"] + _counters["rejected_503"],
        rejected_429=_counters["rejected_429"],
        rejected_503=_counters["rejected_503"],
        duration_s=duration,
        rps=(accepted.num_requests - accepted.num_failures) / duration,
        tokens_per_s=_counters["tokens"] / duration,
        p50_ms=pct(0.5),
        p95_ms=pct(0.95),
        p99_ms=pct(0.99),
        max_ms=float(accepted.max_response_time) if have else None,
    )


@events.quitting.add_listener
def _on_quitting(environment, **_kw):
    if isinstance(environment.runner, WorkerRunner):
        return
    summary = summarize(environment)
    problems = violations(CFG, summary)
    print("\n=== EndoRM load test summary ===", file=sys.stderr)
    print(summary.describe(), file=sys.stderr)
    for p in problems:
        print(f"THRESHOLD FAILED: {p}", file=sys.stderr)
    print("result    " + ("FAIL" if problems else "PASS"), file=sys.stderr)
    if CFG.summary_json:
        Path(CFG.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(CFG.summary_json).write_text(json.dumps({**summary.as_dict(), "violations": problems}, indent=2) + "\n")
    if _log_file is not None:
        _log_file.flush()
    _write_final_csv(environment)
    # Our thresholds decide (locust's default would fail on any error, and ignore latency).
    environment.process_exit_code = 1 if problems else 0


def _write_final_csv(environment) -> None:
    """locust rewrites ``<csv>_stats.csv`` every second and not at the end, so the file misses the
    requests of the run's last second (all of them in a short run): write the final numbers."""
    prefix = getattr(environment.parsed_options, "csv_prefix", None) if environment.parsed_options else None
    if not prefix:
        return
    with open(f"{prefix}_stats.csv", "w", newline="") as f:
        StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(f))
