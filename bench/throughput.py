"""Applier throughput at 10,000 nodes: finalize dispatches and heartbeat folds per second
that one worker process sustains on one cell, with the production batch cap, and
dispatch on two cells by two worker processes.

The events are appended first; then worker processes (``bench.procs worker``, the
dispatch role: the groups role may run elsewhere and is not what is measured) start,
and the rate is taken from the cell's tracking marker between its first move and the
last entry, so interpreter start-up does not count.

    python bench/throughput.py [--events 40000]
"""

from __future__ import annotations

import argparse
import bisect
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet
from bench.alone import print_figures
from bench.procs import spawn
from eventsched.model.events import Event
from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient, Store, unlink_matching
from eventsched.store.streams import parse_id, text
from tests.harness import finalize

__all__ = ["append_ids", "apply_rate", "measure"]

NODES = 10_000
SESSIONS = 2_000


async def append_ids(
    client: RedisClient, keys: CellKeys, events: list[Event]
) -> list[tuple[int, int]]:
    return [parse_id(i) for i in await fleet.append_chunked(client, keys, events)]


async def apply_rate(
    url: str, client: RedisClient, work: dict[CellKeys, list[tuple[int, int]]]
) -> float:
    """Entries per second the worker processes (one per cell) apply from ``work``."""
    with ExitStack() as workers:
        for keys in work:
            workers.enter_context(spawn("worker", url, keys.namespace, keys.cell, "dispatch"))
        started: float | None = None
        first_done = {keys: 0 for keys in work}
        while True:
            done = {}
            for keys, ids in work.items():
                applied = await client.hget(keys.meta, "applied")
                marker = parse_id(text(applied)) if applied else (0, 0)
                done[keys] = bisect.bisect_right(ids, marker)
            if started is None and any(done.values()):
                started, first_done = time.perf_counter(), done
            if all(done[keys] == len(ids) for keys, ids in work.items()):
                break
            await anyio.sleep(0.002)
        assert started is not None
        applied_count = sum(len(ids) - first_done[keys] for keys, ids in work.items())
        return applied_count / (time.perf_counter() - started)


async def measure(url: str, events: int) -> dict[str, float]:
    client = Store(url).client()
    cells = [CellKeys(f"c{i}", "benchtp") for i in range(2)]
    sessions = [s.session_id for s in fleet.sessions(SESSIONS)]
    try:
        for keys in cells:
            await fleet.build(client, keys, NODES, SESSIONS, max_concurrency=64)
        finalizes: list[Event] = [
            finalize(sessions[i % SESSIONS], i // SESSIONS) for i in range(events)
        ]
        one = await apply_rate(
            url, client, {cells[0]: await append_ids(client, cells[0], finalizes)}
        )
        more: list[Event] = [
            finalize(sessions[i % SESSIONS], 1000 + i // SESSIONS) for i in range(events)
        ]
        both = await apply_rate(
            url, client, {keys: await append_ids(client, keys, more) for keys in cells}
        )
        beats: list[Event] = list(fleet.beats(events, NODES))
        folds = await apply_rate(url, client, {cells[0]: await append_ids(client, cells[0], beats)})
    finally:
        await unlink_matching(client, "benchtp:*")
        await client.aclose()
    return {
        "apply_dispatch_per_s": round(one),
        "apply_dispatch_per_s_2_cells": round(both),
        "apply_scaling_2_cells": round(both / one, 2),
        "fold_heartbeat_per_s": round(folds),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    events = parser.parse_args().events
    anyio.run(print_figures, lambda url: measure(url, events))
