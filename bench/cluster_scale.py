"""Dispatches per second with 1, 2 and 4 cells, each applied by a worker process of
its own, over a private 3-master Redis Cluster (no replicas: the figure is the masters')
and over one Redis beside it, in one run.

Each cell gets the same fleet and the same finalizes, appended before its worker
starts; the rate is taken from the cells' tracking markers (bench.throughput). A cell
is one hash slot, so on a cluster the cells' Redis time spreads over the masters that
serve their slots; on this 2-core machine the worker processes and the masters share
two cores, so the figures show the overhead of the cluster path and where the cores
run out, not the scaling a bigger host gets (docs/PERFORMANCE.md gives the model).

    python bench/cluster_scale.py [--events 8000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet
from bench.alone import print_figures
from bench.throughput import append_ids, apply_rate
from eventsched.model.events import Event
from eventsched.model.keys import CellKeys
from eventsched.store.client import Store, unlink_matching
from tests.harness import finalize
from tests.servers import LocalCluster

__all__ = ["measure"]

NODES = 1_000
SESSIONS = 500
NAMESPACE = "benchcl"
CELL_COUNTS = (1, 2, 4)


async def _rates(url: str, events: int) -> dict[int, float]:
    """Dispatches per second with 1, 2 and 4 cells at once on the store at ``url``."""
    client = Store(url).client()
    cells = [CellKeys(f"c{i}", NAMESPACE) for i in range(max(CELL_COUNTS))]
    sessions = [s.session_id for s in fleet.sessions(SESSIONS)]
    rates = {}
    try:
        for keys in cells:
            await fleet.build(client, keys, NODES, SESSIONS, max_concurrency=64)
        for round_index, count in enumerate(CELL_COUNTS):
            first = 1000 * round_index  # utterance indexes no earlier round used
            work: list[Event] = [
                finalize(sessions[i % SESSIONS], first + i // SESSIONS) for i in range(events)
            ]
            appended = {keys: await append_ids(client, keys, work) for keys in cells[:count]}
            rates[count] = await apply_rate(url, client, appended)
    finally:
        for keys in cells:
            await unlink_matching(client, keys.all_pattern)
        await client.aclose()
    return rates


async def measure(url: str, events: int) -> dict[str, float]:
    """The figures, on a cluster started here and on the single Redis at ``url``."""
    single = await _rates(url, events)
    with tempfile.TemporaryDirectory() as directory:
        cluster = LocalCluster(Path(directory), masters=3, replicas=0)
        try:
            clustered = await _rates(cluster.start(), events)
        finally:
            cluster.stop()
    figures: dict[str, float] = {}
    for count in CELL_COUNTS:
        figures[f"cluster_dispatch_per_s_{count}_cells"] = round(clustered[count])
        figures[f"single_dispatch_per_s_{count}_cells"] = round(single[count])
    figures["cluster_scaling_4_cells"] = round(clustered[4] / clustered[1], 2)
    figures["cluster_vs_single_4_cells"] = round(clustered[4] / single[4], 2)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=8_000)
    events = parser.parse_args().events
    anyio.run(print_figures, lambda url: measure(url, events))
