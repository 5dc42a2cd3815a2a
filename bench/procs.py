"""Processes the benchmarks start beside themselves, so the worker, the nodes and the
load each have their own interpreter (as they would in production) instead of sharing
one event loop. Each runs until SIGTERM.

    python -m bench.procs worker URL NAMESPACE CELL[,CELL...] [dispatch|groups,...]
    python -m bench.procs nodes URL NAMESPACE CELL COUNT [SLOTS] # instant echo nodes (SDK)
    python -m bench.procs relay URL                              # a bare one-hop relay
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from bench import fleet
from eventsched.clients.node import Job, JobOutput, Node
from eventsched.dispatch.worker import Worker
from eventsched.model.keys import PROJECTIONS, CellKeys
from eventsched.store.client import Store
from eventsched.store.streams import text, xread_raw

__all__ = ["RELAY_IN", "RELAY_OUT", "spawn"]

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def spawn(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m bench.procs ARGS`` in the checkout; stopped by SIGTERM (then killed)
    on the way out."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.procs", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _on_terminate(action: Callable[[], object]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            action()
            return


async def worker(url: str, namespace: str, cells: str, projections: str) -> None:
    client = Store(url).client()
    keys = [CellKeys(cell, namespace) for cell in cells.split(",")]
    stop = anyio.Event()
    runner = Worker(
        client,
        keys,
        name=f"bench-{os.getpid()}",
        projections=projections.split(","),
    )
    async with anyio.create_task_group() as group:
        group.start_soon(_on_terminate, stop.set)
        await runner.run(stop)  # the batch in hand finished, leases released
        group.cancel_scope.cancel()
    await client.aclose()


RELAY_IN, RELAY_OUT = "benchrelay:{r}:in", "benchrelay:{r}:out"


async def relay(url: str) -> None:
    """The floor of any design with one Python hop between producer and node: wake on a
    stream (blocking XREAD), run a one-line script that appends to the node's stream."""
    client = Store(url).client()
    hand_off = client.register_script("return redis.call('XADD', KEYS[2], '*', 'j', ARGV[1])")
    cursor = "$"
    async with anyio.create_task_group() as group:
        group.start_soon(_on_terminate, group.cancel_scope.cancel)
        while True:
            for _, entries in await xread_raw(client, {RELAY_IN: cursor}, 1000):
                for entry_id, _ in entries:
                    cursor = text(entry_id)
                    await hand_off(keys=[RELAY_IN, RELAY_OUT], args=[entry_id])
    await client.aclose()


async def echo(job: Job) -> JobOutput:
    return JobOutput(asr_text=job.audio_ref, nmt_text=job.audio_ref, tts_audio_ref=job.audio_ref)


async def nodes(url: str, namespace: str, cell: str, count: int, slots: int = 64) -> None:
    client = Store(url).client()
    keys = CellKeys(cell, namespace)
    async with anyio.create_task_group() as group:
        for registration in fleet.nodes(count, max_concurrency=slots, every_pair=True):
            node = Node(
                client,
                keys,
                registration.node_id,
                registration.services,
                registration.max_concurrency,
                echo,
                semantic_languages=list(registration.semantic_languages),
                gpu=registration.gpu,
                load=lambda: (20, 40, 50),
            )
            group.start_soon(node.run)
        group.start_soon(_on_terminate, group.cancel_scope.cancel)
    await client.aclose()


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["worker", url, namespace, cells]:
            anyio.run(worker, url, namespace, cells, ",".join(PROJECTIONS))
        case ["worker", url, namespace, cells, projections]:
            anyio.run(worker, url, namespace, cells, projections)
        case ["relay", url]:
            anyio.run(relay, url)
        case ["nodes", url, namespace, cell, count]:
            anyio.run(nodes, url, namespace, cell, int(count))
        case ["nodes", url, namespace, cell, count, slots]:
            anyio.run(nodes, url, namespace, cell, int(count), int(slots))
        case _:
            sys.exit(__doc__)
