"""Redis time of a dispatch decision with 1,000 and 100,000 nodes in one pool.

Runs on a private redis-server (started here on a free port, stopped by its pid), so
INFO commandstats counts only this benchmark's EVALSHA calls. Prints, per fleet size:
Redis microseconds per finalize decision, per result (release + delivery) and per
heartbeat, the time one apply call holds Redis at several batch sizes, and the ratio
100k / 1k. Figures are ratios within one run; the machine is shared and noisy.

    make bench            # or: python -m bench.dispatch_scale [--sizes 1000,100000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import cast

import anyio

from eventsched.config import DecisionSettings
from eventsched.events import Event
from eventsched.keys import CellKeys
from eventsched.log import append_many
from eventsched.store import RedisClient, Store
from eventsched.streams import text
from eventsched.worker import DEFAULT_BATCH, Worker
from tests.harness import beat, finalize, node, ok, session
from tests.servers import private_redis

SESSIONS = 400
UTTERANCES = 5


async def _evalsha_usec(client: RedisClient) -> tuple[int, int]:
    stats = await client.info("commandstats")
    entry = stats.get("cmdstat_evalsha", {"usec": 0, "calls": 0})
    return int(entry["usec"]), int(entry["calls"])


async def _append_chunked(client: RedisClient, keys: CellKeys, events: list[Event]) -> None:
    for start in range(0, len(events), 5000):
        await append_many(client, keys, events[start : start + 5000])


async def _apply_measured(
    client: RedisClient, keys: CellKeys, batch: int, settings: DecisionSettings
) -> tuple[int, int]:
    """Apply everything pending with batches of ``batch``; returns (usec, calls)."""
    usec_before, calls_before = await _evalsha_usec(client)
    # The dispatch projection alone: groups.lua's folds would count in the same figures.
    worker = Worker(
        client, [keys], settings, name="bench", batch_size=batch, projections=("dispatch",)
    )
    await worker.drain()
    usec_after, calls_after = await _evalsha_usec(client)
    return usec_after - usec_before, calls_after - calls_before


async def measure(url: str, size: int) -> dict[str, float]:
    client = Store(url).client()
    keys = CellKeys("c0", f"bench{size}")
    settings = DecisionSettings(rate_burst=UTTERANCES, heartbeat_fresh_ms=600_000)
    figures: dict[str, float] = {}
    try:
        fleet: list[Event] = [node(f"n{i:06d}", max_concurrency=4) for i in range(size)]
        fleet += [session(f"s{i}") for i in range(SESSIONS)]
        await _append_chunked(client, keys, fleet)
        await _apply_measured(client, keys, 256, settings)

        finalizes: list[Event] = [
            finalize(f"s{i}", u) for u in range(UTTERANCES) for i in range(SESSIONS)
        ]
        await _append_chunked(client, keys, finalizes)
        usec, calls = await _apply_measured(client, keys, DEFAULT_BATCH, settings)
        figures["finalize_us"] = usec / len(finalizes)
        figures[f"hold_us_default_batch{DEFAULT_BATCH}"] = usec / calls

        decided = [
            (f"s{i}:{u}", await client.hget(keys.job(f"s{i}:{u}"), "node"))
            for u in range(UTTERANCES)
            for i in range(SESSIONS)
        ]
        results: list[Event] = [ok(job, 1, text(cast(bytes, n))) for job, n in decided]
        await _append_chunked(client, keys, results)
        usec, _ = await _apply_measured(client, keys, 32, settings)
        figures["result_us"] = usec / len(results)

        beats: list[Event] = [
            beat(f"n{i:06d}", cpu=10 + i % 50) for i in range(0, size, size // 1000)
        ]
        await _append_chunked(client, keys, beats)
        usec, _ = await _apply_measured(client, keys, 32, settings)
        figures["heartbeat_us"] = usec / len(beats)

        for batch in (8, 32, 128):
            more: list[Event] = [finalize(f"s{i}", 100 + batch) for i in range(SESSIONS)]
            await _append_chunked(client, keys, more)
            usec, calls = await _apply_measured(client, keys, batch, settings)
            figures[f"hold_us_batch{batch}"] = usec / calls
    finally:
        await client.flushdb()
        await client.aclose()
    return figures


async def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as directory, private_redis(Path(directory)) as url:
        results = {size: await measure(url, size) for size in sizes}
    names = list(results[sizes[0]])
    print(f"{'figure (Redis time)':<22}" + "".join(f"{size:>12,}" for size in sizes) + "   ratio")
    for name in names:
        values = [results[size][name] for size in sizes]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        print(f"{name:<22}" + "".join(f"{v:>12.1f}" for v in values) + f"   {ratio:5.2f}")
    print(
        f"\n{SESSIONS * UTTERANCES} finalize decisions per fleet size; "
        "hold_us = Redis time of one apply call (target: about 2,000 us at most)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    anyio.run(main, sizes)
