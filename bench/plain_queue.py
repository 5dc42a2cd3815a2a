"""From a finalize to the node holding its job: eventsched against a plain queue.

eventsched: the gateway appends the finalize to the log; a worker process (``bench.procs
worker``) applies it and hands the job to the chosen node's inbox; the node, blocked in
XREADGROUP on its inbox as the SDK is, wakes with it. The plain queue is what a team would
build instead: the gateway LPUSHes the job on a per-language-pair list and a node blocked
in BRPOP on it wakes with it (no capacity, affinity, ordering, retries or replay). And,
to show the floor of any design with a Python process between the producer and the
node, a bare relay (``bench.procs relay``): it wakes on a stream and runs a one-line
script appending to the node's stream, deciding nothing. One job at a time, so each
figure is latency, not queueing. eventsched runs twice: trusted (the gateway appends to
the log) and through the trust boundary (the gateway appends to its own ingress and
rings the bell; the worker admits it to the log and applies it in one script call).

    python bench/plain_queue.py [--jobs 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet
from bench.alone import percentile, print_figures, until
from bench.procs import RELAY_IN, RELAY_OUT, spawn
from eventsched.model.events import Event, encode_event
from eventsched.model.keys import INBOX_GROUP, CellKeys
from eventsched.store.append import append_many, submit
from eventsched.store.client import RedisClient, Store, unlink_matching
from eventsched.store.streams import text, xread_raw, xreadgroup_raw
from tests.harness import finalize, node, ok, session

__all__ = ["measure"]

NODE = "n0"


async def _timed(
    jobs: int,
    send: Callable[[int], Awaitable[object]],
    take: Callable[[], Awaitable[bool]],
    settle: Callable[[int], Awaitable[object]] | None = None,
) -> list[float]:
    """Milliseconds from each send to the node task taking that job, one job at a time;
    ``settle`` (untimed) follows each."""
    took: list[float] = []
    for index in range(jobs):
        taken = anyio.Event()

        async def node_task(done: anyio.Event = taken) -> None:
            while not await take():
                pass
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(node_task)
            await anyio.sleep(0.001)  # let the node block in its read first
            started = time.perf_counter()
            await send(index)
            await taken.wait()
            took.append((time.perf_counter() - started) * 1000)
        if settle is not None:
            await settle(index)
    return took


async def _eventsched(
    url: str, client: RedisClient, node_client: RedisClient, jobs: int, confined: bool
) -> list[float]:
    """With ``confined``, the gateway and the node send from their ingress streams
    (as the default user: Redis's ACL checks cost too little to tell apart here)."""
    namespace = "benchtrust" if confined else "benchqueue"
    keys = CellKeys("c0", namespace)
    gateway, node_source = ("gateway:gw", f"node:{NODE}") if confined else (None, None)
    prefix = "gw." if confined else ""
    events: list[Event] = [fleet.SETTINGS_CHANGED, node(NODE, max_concurrency=8)]
    events += [session(f"{prefix}s{i}") for i in range(jobs)]
    await append_many(client, keys, events)
    inbox = keys.inbox(NODE)
    with spawn("worker", url, namespace, keys.cell):

        async def fleet_applied() -> bool:
            return await client.hget(keys.session(f"{prefix}s{jobs - 1}"), "src") is not None

        await until(fleet_applied, "the worker to apply the fleet")

        async def send(index: int) -> None:
            await submit(client, keys, gateway, finalize(f"{prefix}s{index}", 0))

        async def take() -> bool:
            reply = await xreadgroup_raw(node_client, INBOX_GROUP, NODE, {inbox: ">"}, 1, 1000)
            return bool(reply and reply[0][1])

        async def answer(index: int) -> None:  # the slot freed, as the node would
            await submit(client, keys, node_source, ok(f"{prefix}s{index}:0", 1, NODE))

        return await _timed(jobs, send, take, answer)


async def _plain(client: RedisClient, node_client: RedisClient, jobs: int) -> list[float]:
    queue = "benchqueue:plain:en>zh"

    async def send(index: int) -> None:
        await client.lpush(queue, f"s{index}:0|en|zh|audio/s{index}/0")

    async def take() -> bool:
        return await node_client.brpop([queue], timeout=1) is not None

    return await _timed(jobs, send, take)


async def _relay(url: str, client: RedisClient, node_client: RedisClient, jobs: int) -> list[float]:
    cursor = "$"

    async def send(index: int) -> None:
        await client.xadd(RELAY_IN, {"e": encode_event(finalize(f"s{index}", 0))})

    async def take() -> bool:
        nonlocal cursor
        reply = await xread_raw(node_client, {RELAY_OUT: cursor}, 1000)
        for _, entries in reply:
            cursor = text(entries[-1][0])
        return bool(reply)

    async def relay_reading() -> bool:
        clients = cast(list[dict[str, Any]], await client.client_list())
        return any(c.get("cmd") == "xread" and c.get("flags") == "b" for c in clients)

    with spawn("relay", url):
        await until(relay_reading, "the relay to block in its read")
        return await _timed(jobs, send, take)


async def measure(url: str, jobs: int) -> dict[str, float]:
    store = Store(url)
    client, node_client = store.client(), store.client()
    try:
        ours = await _eventsched(url, client, node_client, jobs, confined=False)
        confined = await _eventsched(url, client, node_client, jobs, confined=True)
        plain = await _plain(client, node_client, jobs)
        relay = await _relay(url, client, node_client, jobs)
    finally:
        for namespace in ("benchqueue", "benchtrust", "benchrelay"):
            await unlink_matching(client, f"{namespace}:*")
        await client.aclose()
        await node_client.aclose()
    ours_p50, confined_p50, plain_p50, relay_p50 = (
        percentile(v, 0.5) for v in (ours, confined, plain, relay)
    )
    return {
        "finalize_to_inbox_p50_ms": round(ours_p50, 3),
        "finalize_to_inbox_p99_ms": round(percentile(ours, 0.99), 3),
        "finalize_to_inbox_confined_p50_ms": round(confined_p50, 3),
        "finalize_to_inbox_confined_p99_ms": round(percentile(confined, 0.99), 3),
        "trust_boundary_overhead_p50_ratio": round(confined_p50 / ours_p50, 2),
        "plain_queue_p50_ms": round(plain_p50, 3),
        "plain_queue_p99_ms": round(percentile(plain, 0.99), 3),
        "vs_plain_queue_p50_ratio": round(ours_p50 / plain_p50, 2),
        "python_relay_p50_ms": round(relay_p50, 3),
        "python_relay_vs_plain_p50_ratio": round(relay_p50 / plain_p50, 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    jobs = parser.parse_args().jobs
    anyio.run(print_figures, lambda url: measure(url, jobs))
