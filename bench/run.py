"""The benchmarks in one run, against a private redis-server (so INFO and MEMORY figures
count only this run), printing a table and, with --json, one JSON object last.

    python -m bench.run --quick --json

Figures are this machine's, noisy; compare ratios within one run. What issue 8 asks
and this does not measure yet: the old design's baseline, a plain queue, end to end at
rising load, two cells on two workers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import anyio

from bench.dispatch_scale import measure as dispatch_scale
from bench.replay_speed import synthetic
from eventsched.applier import APPLIER_GROUP, Applier
from eventsched.config import DecisionSettings
from eventsched.events import Event
from eventsched.keys import CellKeys
from eventsched.log import append, append_many
from eventsched.replay import replay
from eventsched.store import MEMORY_URL, RedisClient, Store
from eventsched.streams import xrange_raw, xread_raw
from eventsched.worker import Worker, ensure_group
from tests.harness import beat, finalize, node, session
from tests.servers import private_redis

SETTINGS = DecisionSettings(rate_burst=10_000, rate_per_s=10_000, heartbeat_fresh_ms=3_600_000)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


async def _fleet(client: RedisClient, keys: CellKeys, nodes: int, sessions: int) -> None:
    events: list[Event] = [node(f"n{i:06d}", max_concurrency=8) for i in range(nodes)]
    events += [session(f"s{i:05d}") for i in range(sessions)]
    for start in range(0, len(events), 5000):
        await append_many(client, keys, events[start : start + 5000])
    await Worker(client, [keys], SETTINGS, name="bench", batch_size=256).drain()


async def call_latency(url: str, calls: int) -> dict[str, float]:
    """Client-observed time of one apply call holding one finalize."""
    client = Store(url).client()
    keys = CellKeys("c0", "benchcall")
    try:
        await _fleet(client, keys, 1000, calls)
        worker = Worker(client, [keys], SETTINGS, name="bench")
        await worker.drain()
        applier = Applier(client, keys, SETTINGS, holder="bench")
        took = []
        for index in range(calls):
            entry_id = await append(client, keys, finalize(f"s{index:05d}", 0))
            entries = await xrange_raw(client, keys.log, entry_id, 1)
            await client.xreadgroup(APPLIER_GROUP, "bench", {keys.log: ">"}, count=1)
            started = time.perf_counter()
            await applier.apply(entries)
            took.append(_ms(time.perf_counter() - started))
        return {"dispatch_call_p50_ms": _pct(took, 0.5), "dispatch_call_p99_ms": _pct(took, 0.99)}
    finally:
        await client.flushdb()
        await client.aclose()


async def finalize_to_inbox(url: str, count: int) -> dict[str, float]:
    """Through a running worker: from a finalize's append to the job in the inbox."""
    store = Store(url)
    client, producer = store.client(), store.client()
    keys = CellKeys("c0", "benche2e")
    stop = anyio.Event()
    took: list[float] = []
    try:
        await _fleet(producer, keys, 1, count)
        worker = Worker(client, [keys], SETTINGS, name="bench", block_ms=1000, tick_ms=1000)
        inbox = keys.inbox("n000000")
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run, stop)
            cursor = "0-0"
            for index in range(count):
                started = time.perf_counter()
                await append(producer, keys, finalize(f"s{index:05d}", 0))
                while True:
                    reply = await xread_raw(producer, {inbox: cursor}, 1000)
                    if reply and reply[0][1]:
                        cursor = reply[0][1][-1][0].decode()
                        break
                took.append(_ms(time.perf_counter() - started))
                await producer.delete(keys.node_jobs("n000000"))  # keep a slot free
                await producer.hset(keys.node("n000000"), "run", 0)
            stop.set()
        return {
            "finalize_to_inbox_p50_ms": _pct(took, 0.5),
            "finalize_to_inbox_p99_ms": _pct(took, 0.99),
        }
    finally:
        await producer.flushdb()
        await client.aclose()
        await producer.aclose()


async def throughput(url: str, nodes: int, events: int) -> dict[str, float]:
    """One worker process on one cell: finalize dispatches and heartbeat folds per second
    with the production batch cap."""
    client = Store(url).client()
    keys = CellKeys("c0", "benchtp")
    try:
        sessions = events // 10
        await _fleet(client, keys, nodes, sessions)
        finalizes: list[Event] = [
            finalize(f"s{i % sessions:05d}", i // sessions) for i in range(events)
        ]
        for start in range(0, events, 5000):
            await append_many(client, keys, finalizes[start : start + 5000])
        started = time.perf_counter()
        await Worker(client, [keys], SETTINGS, name="bench", projections=("dispatch",)).drain()
        dispatch_rate = events / (time.perf_counter() - started)
        beats: list[Event] = [beat(f"n{i % nodes:06d}", cpu=i % 90) for i in range(events)]
        for start in range(0, events, 5000):
            await append_many(client, keys, beats[start : start + 5000])
        started = time.perf_counter()
        await Worker(client, [keys], SETTINGS, name="bench", projections=("dispatch",)).drain()
        return {
            "apply_dispatch_per_s": round(dispatch_rate),
            "fold_heartbeat_per_s": round(events / (time.perf_counter() - started)),
        }
    finally:
        await client.flushdb()
        await client.aclose()


async def memory(url: str, nodes: int) -> dict[str, float]:
    """Redis bytes per idle node (its record and memberships; its inbox apart), per open
    session and per log entry, from used_memory and MEMORY USAGE growth."""
    client = Store(url).client()
    keys = CellKeys("c0", "benchmem")

    async def used() -> int:
        return int((await client.info("memory"))["used_memory"])

    async def log_bytes() -> int:
        return int(await client.memory_usage(keys.log) or 0)

    try:
        await ensure_group(client, keys.log, APPLIER_GROUP)
        base, base_log = await used(), await log_bytes()
        await _fleet(client, keys, nodes, 0)
        grown, grown_log = await used() - base, await log_bytes() - base_log
        inbox = int(await client.memory_usage(keys.inbox("n000000")) or 0)
        base, base_log = await used(), await log_bytes()
        await _fleet(client, keys, 0, nodes)
        sessions, sessions_log = await used() - base, await log_bytes() - base_log
        return {
            "node_bytes": round((grown - grown_log) / nodes - inbox),
            "node_inbox_bytes": inbox,
            "session_bytes": round((sessions - sessions_log) / nodes),
            "log_entry_bytes": round((grown_log + sessions_log) / (2 * nodes)),
        }
    finally:
        await client.flushdb()
        await client.aclose()


async def replay_rates(url: str, events: int) -> dict[str, float]:
    fixture = synthetic(events)
    rates: dict[str, float] = {}
    for label, target in (("fake", MEMORY_URL), ("redis", url)):
        started = time.perf_counter()
        await replay(fixture, target)
        rates[f"replay_events_per_s_{label}"] = round(
            len(fixture.entries) / (time.perf_counter() - started)
        )
    return rates


async def main(quick: bool, as_json: bool) -> None:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory, private_redis(Path(directory)) as url:
        for size in (1000, 100_000):
            figures[f"dispatch_redis_us_{size // 1000}k"] = round(
                (await dispatch_scale(url, size))["finalize_us"], 1
            )
        figures |= await call_latency(url, 300 if quick else 2000)
        figures |= await finalize_to_inbox(url, 200 if quick else 1000)
        figures |= await throughput(url, 10_000, 20_000 if quick else 100_000)
        figures |= await memory(url, 10_000)
        figures |= await replay_rates(url, 10_000 if quick else 50_000)
    for name, value in figures.items():
        print(f"{name:<28}{value:>14}")
    if as_json:
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (about 2 minutes)")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    arguments = parser.parse_args()
    anyio.run(main, arguments.quick, arguments.json)
