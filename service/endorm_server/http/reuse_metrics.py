"""Prometheus series for group-aware scoring (service/endorm_server/scoring/grouping.py's ReuseCounters).

A collector reads the scorer's counters at scrape time, so the grouping code
stays free of prometheus_client and the series exist (at 0) before the engine
is up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from endorm_server.scoring.grouping import ReuseCounters


class ReuseCollector(Collector):
    def __init__(self, counters: Callable[[], ReuseCounters | None]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        c = self._counters() or ReuseCounters()
        yield CounterMetricFamily(
            "endorm_prefix_cache_hit_tokens",
            "Prompt tokens of scored sequences served from the prefix cache",
            value=c.cached_prompt_tokens,
        )
        rows = CounterMetricFamily(
            "endorm_lm_head_rows", "Positions of scored sequences by whether the LM head ran on them", labels=["state"]
        )
        rows.add_metric(["computed"], c.lm_head_rows_computed)
        rows.add_metric(["skipped"], c.lm_head_rows_skipped)
        yield rows
        yield CounterMetricFamily(
            "endorm_rows_from_group_leader",
            "Rows a cache hit skipped, taken from the group's leader",
            value=c.rows_from_leader,
        )
        yield CounterMetricFamily(
            "endorm_resubmissions",
            "Sequences re-run without the prefix cache because needed rows were skipped",
            value=c.resubmissions,
        )
        yield CounterMetricFamily(
            "endorm_shared_engine_calls",
            "Engine calls answered by an identical call already in flight (another request's duplicate)",
            value=c.shared_calls,
        )
