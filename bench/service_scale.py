"""What the HTTP face costs at 10,000 nodes and 10,000 sessions: the statistics window
the dispatch worker publishes (its scan of nodes and sessions, once per 5 s of event
time), and a request of ``/api/v1/stats`` and of ``/metrics`` (which read only what was
published: the same whatever the fleet's size).

    python bench/service_scale.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import httpx

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet
from bench.alone import percentile, print_figures
from eventsched.model.keys import CellKeys
from eventsched.projections.stats import StatsBuilder
from eventsched.service.api import create_app
from eventsched.store.client import Store, unlink_matching

__all__ = ["measure"]

_REQUESTS = 50


async def measure(url: str, nodes: int = 10_000) -> dict[str, float]:
    client = Store(url).client()
    keys = CellKeys("c0", "benchservice")
    try:
        await fleet.build(client, keys, nodes, nodes)
        started = time.perf_counter()
        await StatsBuilder().publish(client, keys, 5000)
        publish_ms = (time.perf_counter() - started) * 1000
        app = create_app(client, keys.namespace, [keys.cell])
        transport = httpx.ASGITransport(app=app)
        figures = {"stats_publish_ms_10k": round(publish_ms, 1)}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            for path, name in (("/api/v1/stats", "api_stats"), ("/metrics", "metrics_scrape")):
                took = []
                for _ in range(_REQUESTS):
                    started = time.perf_counter()
                    response = await http.get(path)
                    took.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text
                figures[f"{name}_p50_ms_10k"] = round(percentile(took, 0.5), 2)
        return figures
    finally:
        await unlink_matching(client, f"{keys.namespace}:*")
        await client.aclose()


if __name__ == "__main__":
    anyio.run(print_figures, measure)
