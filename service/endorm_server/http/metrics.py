"""The service's Prometheus series (``endorm_`` prefix, base units).

They live in their own registry so they can be checked alone (promtool
rejects vLLM's colon names); ``/metrics`` serves both registries.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from endorm_server.errors import CODES, RequestError

# Why a request is turned away to retry later (429/503: core/admission.py, readiness): created at 0 at
# start, so the first burst after a restart is a rate in Prometheus, not a series that appears with its
# first sample. Failures (4xx/5xx by code, endorm_server/errors.py) are counted apart, also from 0.
REJECTION_REASONS = ("tokens", "queue_full", "wait_timeout", "draining", "not_ready", "engine_unavailable")
RETRYABLE_CODES = {"draining": "draining", "not_ready": "not_ready", "engine_unavailable": "engine_unavailable"}
TOKEN_PARTS = ("prompt", "response")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, max_inflight_tokens: int | None = None) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "endorm_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "endorm_request_duration_seconds", "HTTP request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.admission_wait = Histogram(
            "endorm_admission_wait_seconds", "Time a request waited for admission", buckets=LATENCY_BUCKETS, registry=r
        )
        self.items_per_request = Histogram(
            "endorm_request_items",
            "Sequences per scoring request (batch size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.tokens = Counter("endorm_scored_tokens", "Tokens scored, by part of the sequence", ["part"], registry=r)
        self.sequences = Counter("endorm_scored_sequences", "Sequences scored", registry=r)
        self.rejections = Counter(
            "endorm_rejections", "Requests turned away to retry later (429/503), by reason", ["reason"], registry=r
        )
        self.errors = Counter("endorm_request_errors", "Requests that failed (4xx/5xx), by code", ["code"], registry=r)
        self.item_errors = Counter(
            "endorm_item_errors", "Items that failed alone (item_errors: report), by code", ["code"], registry=r
        )
        self.in_flight_requests = Gauge(
            "endorm_in_flight_requests", "Scoring requests admitted and not finished", registry=r
        )
        self.in_flight_tokens = Gauge("endorm_in_flight_tokens", "Tokens admitted and not finished", registry=r)
        self.waiting_requests = Gauge("endorm_waiting_requests", "Requests waiting for admission", registry=r)
        self.load = Gauge(
            "endorm_load_ratio", "In-flight tokens over the admission limit (autoscaling signal, 1 = full)", registry=r
        )
        self.engine_unfinished = Gauge("endorm_engine_unfinished_sequences", "Sequences in the engine", registry=r)
        self.ready = Gauge("endorm_ready", "1 when warm and not draining", registry=r)
        # endorm_model_info{model=..., system_fingerprint=...} 1, set once the model is loaded
        self.token_budget = Gauge(
            "endorm_max_inflight_tokens", "The admission budget in tokens (--max-inflight-tokens)", registry=r
        )
        if max_inflight_tokens is not None:
            self.token_budget.set(max_inflight_tokens)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for code in CODES:
            if code not in RETRYABLE_CODES and code != "overloaded":
                self.errors.labels(code)
            self.item_errors.labels(code)
        for part in TOKEN_PARTS:
            self.tokens.labels(part)
        self.model_info = Info("endorm_model", "The served model and its system_fingerprint", registry=r)

    def count_failure(self, exc: RequestError) -> None:
        """A request answered with ``exc``: a rejection to retry (429/503) or an error, by code."""
        reason = getattr(exc, "reason", None) or RETRYABLE_CODES.get(exc.code)
        if reason is not None:
            self.rejections.labels(reason).inc()
        else:
            self.errors.labels(exc.code).inc()
