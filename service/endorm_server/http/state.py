"""What the routes share: the scorer, admission control, metrics, readiness."""

from __future__ import annotations

from dataclasses import dataclass

from endorm_server.config import Settings
from endorm_server.core.admission import AdmissionController
from endorm_server.core.scorer import Scorer
from endorm_server.http.metrics import Metrics


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    admission: AdmissionController
    api_keys: list[bytes]
    scorer: Scorer | None = None
    draining: bool = False
    drain_started_at: float | None = None  # time.monotonic() of SIGTERM
    http_in_flight: int = 0  # POST requests received and not answered (drain waits for them)
    startup_error: BaseException | None = None

    def __post_init__(self) -> None:
        self.admission.on_change = self.refresh_gauges

    @property
    def ready(self) -> bool:
        return self.scorer is not None and self.scorer.engine.healthy and not self.draining

    @property
    def engine_dead(self) -> bool:
        """The engine started and then died: nothing in flight or to come can be scored here."""
        return self.scorer is not None and not self.scorer.engine.healthy

    def turns_away(self, arrived_at: float) -> bool:
        """Draining refuses requests that arrived after the signal; earlier ones finish."""
        return self.drain_started_at is not None and arrived_at >= self.drain_started_at

    def refresh_gauges(self) -> None:
        m, a = self.metrics, self.admission
        m.in_flight_requests.set(a.requests)
        m.in_flight_tokens.set(a.tokens)
        m.waiting_requests.set(a.waiting)
        m.load.set(a.tokens / a.max_tokens)
        m.ready.set(1 if self.ready else 0)
        m.engine_unfinished.set(self.scorer.engine.num_unfinished() if self.scorer else 0)
