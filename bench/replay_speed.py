"""Replay speed: events per second through the whole replay path (append with explicit
IDs, apply and group folds, canonical output), embedded and on the Redis at REDIS_URL.

    python bench/replay_speed.py [--events 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventsched.model.events import Event, encode_event
from eventsched.ops.replay import Fixture, replay
from eventsched.store.client import MEMORY_URL
from tests.harness import START_MS, beat, finalize, node, ok, session


def synthetic(events: int) -> Fixture:
    """A busy cell: 50 nodes, 200 sessions, finalizes with their results, heartbeats."""
    fixture = Fixture(name="synthetic")
    items: list[Event] = [node(f"n{i:03d}", max_concurrency=8) for i in range(50)]
    items += [session(f"s{i:03d}") for i in range(200)]
    index = 0
    while len(items) < events:
        for i in range(200):
            items.append(finalize(f"s{i:03d}", index))
        for i in range(50):
            items.append(beat(f"n{i:03d}"))
        index += 1
    ms = START_MS
    for item in items[:events]:
        ms += 1
        fixture.entries.append((f"{ms}-0", {"e": encode_event(item)}))
    # Results go to whichever node was chosen: an ok for a node that did not get the
    # job is dead-lettered (not_owner), which still costs a full apply.
    for i in range(0, min(events // 4, 200 * index), 7):
        ms += 1
        fixture.entries.append((f"{ms}-0", {"e": encode_event(ok(f"s{i % 200:03d}:0", 1, "n000"))}))
    return fixture


async def measure(url: str, fixture: Fixture) -> float:
    started = time.perf_counter()
    await replay(fixture, url)
    return len(fixture.entries) / (time.perf_counter() - started)


async def main(events: int) -> None:
    fixture = synthetic(events)
    real = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    fake_rate = await measure(MEMORY_URL, fixture)
    real_rate = await measure(real, fixture)
    print(f"replay of {len(fixture.entries)} events")
    print(f"  embedded fakeredis: {fake_rate:>9,.0f} events/s")
    print(f"  redis ({real}): {real_rate:>9,.0f} events/s   ratio {real_rate / fake_rate:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    anyio.run(main, parser.parse_args().events)
