"""Prometheus metrics of a set of cells, from what their dispatch workers wrote: the
cumulative counts and latency histograms of the statistics windows and the latest
snapshot's gauges (projections.stats ``read_published``), and the tracking marker's age.
A scrape reads one hash and one field per cell, whatever the fleet's size."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from eventsched.model.keys import CellKeys
from eventsched.projections.snapshot import applied_ms
from eventsched.projections.stats import (
    BUCKETS_MS,
    COUNTS,
    LATENCIES,
    REASONS,
    read_published,
)
from eventsched.store.client import RedisClient

__all__ = ["CONTENT_TYPE", "CellFigures", "read_figures", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_HELP = {
    "dispatch": "Finalize appended to its apply call returning (wall time)",
    "e2e": "Finalize to result (event time)",
    "wait": "Waiting in a pair's queue for a slot (event time)",
}


@dataclass(frozen=True)
class CellFigures:
    cell: str
    totals: dict[str, int]
    snapshot: dict[str, Any] | None
    applied_ms: int | None  # event time of the last applied log entry


async def read_figures(client: RedisClient, cells: Sequence[CellKeys]) -> list[CellFigures]:
    found = []
    for keys in cells:
        snapshot, totals = await read_published(client, keys)
        found.append(CellFigures(keys.cell, totals, snapshot, await applied_ms(client, keys)))
    return found


class _Figures(Collector):
    def __init__(self, cells: Sequence[CellFigures], now_ms: int) -> None:
        self.cells = cells
        self.now_ms = now_ms

    def collect(self) -> Iterable[Metric]:
        decisions = CounterMetricFamily(
            "eventsched_decisions",
            "Decisions by kind, summed over statistics windows",
            labels=["cell", "kind"],
        )
        ended = {
            kind: CounterMetricFamily(
                f"eventsched_{kind}",
                f"Finalizes or jobs {kind}, by reason",
                labels=["cell", "reason"],
            )
            for kind in REASONS
        }
        latency = {
            name: HistogramMetricFamily(
                f"eventsched_{name}_latency_seconds", _LATENCY_HELP[name], labels=["cell"]
            )
            for name in LATENCIES
        }
        gauges = {
            "nodes": GaugeMetricFamily(
                "eventsched_nodes", "Nodes by state", labels=["cell", "state"]
            ),
            "running": GaugeMetricFamily(
                "eventsched_pool_running_slots", "Slots running a job", labels=["cell", "pool"]
            ),
            "free": GaugeMetricFamily(
                "eventsched_pool_free_slots", "Slots free on up nodes", labels=["cell", "pool"]
            ),
            "waiting": GaugeMetricFamily(
                "eventsched_queue_waiting", "Jobs waiting for a slot", labels=["cell", "pair"]
            ),
            "lag": GaugeMetricFamily(
                "eventsched_consumer_lag", "Entries a group has not read", labels=["cell", "group"]
            ),
            "pending": GaugeMetricFamily(
                "eventsched_consumer_pending",
                "Entries read, not acknowledged",
                labels=["cell", "group"],
            ),
            "age": GaugeMetricFamily(
                "eventsched_snapshot_age_seconds", "Age of the statistics snapshot", labels=["cell"]
            ),
            "marker": GaugeMetricFamily(
                "eventsched_marker_age_seconds",
                "Wall time since the event time of the last applied log entry",
                labels=["cell"],
            ),
        }
        for figures in self.cells:
            cell, totals = figures.cell, figures.totals
            for name in COUNTS:
                decisions.add_metric([cell, name], totals.get(name, 0))
            for kind, reasons in REASONS.items():
                seen = {n.split(":", 1)[1] for n in totals if n.startswith(kind + ":")}
                for reason in sorted(set(reasons) | seen):
                    ended[kind].add_metric([cell, reason], totals.get(f"{kind}:{reason}", 0))
            for name in LATENCIES:
                cumulative, buckets = 0, []
                for index, bound in enumerate((*BUCKETS_MS, None)):
                    cumulative += totals.get(f"{name}:{index}", 0)
                    buckets.append(("+Inf" if bound is None else str(bound / 1000), cumulative))
                latency[name].add_metric([cell], buckets, totals.get(f"{name}:sum_ms", 0) / 1000)
            if figures.applied_ms is not None:
                gauges["marker"].add_metric([cell], max(0, self.now_ms - figures.applied_ms) / 1000)
            snapshot = figures.snapshot
            if snapshot is None:
                continue
            gauges["age"].add_metric(
                [cell], max(0, self.now_ms - snapshot["published_wall_ms"]) / 1000
            )
            for state, count in snapshot.get("nodes_by_state", {}).items():
                gauges["nodes"].add_metric([cell, state], count)
            for pool, entry in snapshot.get("pools", {}).items():
                gauges["running"].add_metric([cell, pool], entry["running"])
                gauges["free"].add_metric([cell, pool], entry.get("free_slots", 0))
            for pair, entry in snapshot.get("queues", {}).items():
                gauges["waiting"].add_metric([cell, pair], entry["waiting"])
            for group, entry in snapshot.get("consumers", {}).items():
                gauges["pending"].add_metric([cell, group], entry["pending"])
                if entry.get("lag") is not None:
                    gauges["lag"].add_metric([cell, group], entry["lag"])
        yield decisions
        yield from ended.values()
        yield from latency.values()
        yield from gauges.values()


def render(cells: Sequence[CellFigures], now_ms: int | None = None) -> bytes:
    """The Prometheus text exposition of ``cells``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(cells, int(time.time() * 1000) if now_ms is None else now_ms))
    return generate_latest(registry)
