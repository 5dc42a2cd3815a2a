"""Redis time of a dispatch decision as the fleet grows (100 to 100,000 nodes).

Runs on a private redis-server (started here on a free port, stopped by its pid), so
INFO commandstats counts only this benchmark's FCALLs of apply.lua. The cell is
``bench.fleet``'s: four configured pools, eight language pairs, mixed nodes beating with
varied load. Sessions finalize in rounds, each round's jobs answered before the next, so
every size decides with free slots. Prints, per fleet size: Redis microseconds per
finalize decision, per result (release + delivery) and per heartbeat, the time one apply
call holds Redis, and the ratio of the largest fleet to 1,000 nodes. Figures are ratios
within one run; the machine is shared and noisy.

    python bench/dispatch_scale.py [--sizes 100,1000,10000,100000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet
from bench.alone import private_server
from eventsched.dispatch.worker import DEFAULT_BATCH, Worker
from eventsched.model.events import Event
from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient, Store, unlink_matching
from tests.harness import finalize

__all__ = ["apply_measured", "measure"]

SESSIONS = 400


async def _apply_usec(client: RedisClient) -> tuple[int, int]:
    stats = await client.info("commandstats")
    entry = stats.get("cmdstat_fcall", {"usec": 0, "calls": 0})  # apply.lua, a library
    return int(entry["usec"]), int(entry["calls"])


async def apply_measured(client: RedisClient, keys: CellKeys, batch: int) -> tuple[int, int]:
    """Apply everything pending with batches of ``batch``; returns (usec, calls)."""
    usec_before, calls_before = await _apply_usec(client)
    # The dispatch projection alone: groups.lua's folds would count in the same figures.
    worker = Worker(client, [keys], name="bench", batch_size=batch, projections=("dispatch",))
    await worker.drain()
    usec_after, calls_after = await _apply_usec(client)
    return usec_after - usec_before, calls_after - calls_before


async def measure(url: str, size: int, rounds: int = 5) -> dict[str, float]:
    client = Store(url).client()
    keys = CellKeys("c0", f"bench{size}")
    sessions = [s.session_id for s in fleet.sessions(SESSIONS)]
    figures: dict[str, float] = {}
    try:
        await fleet.build(client, keys, size, SESSIONS)
        beats: list[Event] = list(fleet.beats(size, size))
        await fleet.append_chunked(client, keys, beats)
        usec, _ = await apply_measured(client, keys, 64)
        figures["heartbeat_us"] = usec / len(beats)

        finalize_usec = finalize_calls = result_usec = placed = 0
        for index in range(rounds):
            await fleet.append_chunked(client, keys, [finalize(s, index) for s in sessions])
            usec, calls = await apply_measured(client, keys, DEFAULT_BATCH)
            finalize_usec, finalize_calls = finalize_usec + usec, finalize_calls + calls
            results = await fleet.running_results(client, keys, sessions, index)
            placed += len(results)
            await fleet.append_chunked(client, keys, results)
            usec, _ = await apply_measured(client, keys, 32)
            result_usec += usec
        decisions = rounds * len(sessions)
        figures["finalize_us"] = finalize_usec / decisions
        figures[f"hold_us_batch{DEFAULT_BATCH}"] = finalize_usec / finalize_calls
        figures["result_us"] = result_usec / max(placed, 1)
        figures["rejected"] = decisions - placed
    finally:
        await unlink_matching(client, f"{keys.namespace}:*")
        await client.aclose()
    return figures


async def main(sizes: list[int]) -> None:
    with private_server() as url:
        results = {size: await measure(url, size) for size in sizes}
    names = list(results[sizes[0]])
    print(f"{'figure (Redis time)':<22}" + "".join(f"{size:>12,}" for size in sizes) + "   ratio")
    for name in names:
        values = [results[size][name] for size in sizes]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        print(f"{name:<22}" + "".join(f"{v:>12.1f}" for v in values) + f"   {ratio:5.2f}")
    print("\nus per event of Redis time; hold_us = one apply call (target: 2,000 us at most)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    anyio.run(main, sizes)
