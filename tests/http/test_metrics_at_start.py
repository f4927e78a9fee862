"""Series an operator's dashboard rates exist from the start, and the admission budget is exported.

A labelled counter appears with its first event, and Prometheus computes a rate only from a series'
second sample: the first 429 burst after a restart would read as 0. So every rejection reason and
token part is created at 0 when the app is built.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from endorm_server.http.metrics import REJECTION_REASONS, TOKEN_PARTS
from tests.conftest import tiny_model
from tests.http.stub_engine import asgi_client, stub_app, stub_settings


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def test_rejection_reasons_and_budget_before_any_request():
    settings = stub_settings(str(tiny_model("llama")), max_inflight_tokens=1234)
    async with asgi_client(stub_app(settings, None)) as client:
        samples = _samples((await client.get("/metrics")).text)
    for reason in REJECTION_REASONS:
        assert samples[("endorm_rejections_total", (("reason", reason),))] == 0
    for code in ("invalid_input", "sequence_too_long", "deadline_exceeded", "client_disconnected", "internal_error"):
        assert samples[("endorm_request_errors_total", (("code", code),))] == 0
        assert samples[("endorm_item_errors_total", (("code", code),))] == 0
    for part in TOKEN_PARTS:
        assert samples[("endorm_scored_tokens_total", (("part", part),))] == 0
    assert samples[("endorm_max_inflight_tokens", ())] == 1234
