"""Load shapes: ramp, step and spike, configured by ``ENDORM_LT_*`` variables.

The locustfile exposes exactly one of them (``ENDORM_LT_SHAPE``), since locust
runs the first shape class it finds. Each shape stops the test by itself at its
end, so a headless run is bounded even without ``--run-time``. The plan itself is
``loadtests.config.schedule`` (plain data, no locust import: the benchmark uses it
to label load steps; importing locust monkey-patches the process with gevent).
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtests.config import LoadConfig, schedule, users_at


class _ConfiguredShape(LoadTestShape):
    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self.cfg = LoadConfig.from_env()
        self.segments = schedule(self.cfg)

    def tick(self):
        users = users_at(self.segments, self.get_run_time())
        if users is None:
            return None  # end of the shape: the test stops
        return users, self.cfg.spawn_rate


class RampShape(_ConfiguredShape):
    """Grow linearly to ENDORM_LT_RAMP_USERS over ENDORM_LT_RAMP_S, hold ENDORM_LT_HOLD_S, stop."""


class StepShape(_ConfiguredShape):
    """ENDORM_LT_STEPS user counts (e.g. 1,2,4,8), ENDORM_LT_STEP_S seconds each, then stop."""


class SpikeShape(_ConfiguredShape):
    """ENDORM_LT_BASE_USERS, jump to ENDORM_LT_SPIKE_USERS at ENDORM_LT_SPIKE_AT_S for
    ENDORM_LT_SPIKE_S, back to the base for ENDORM_LT_AFTER_S, stop."""


SHAPES = {"ramp": RampShape, "step": StepShape, "spike": SpikeShape}
