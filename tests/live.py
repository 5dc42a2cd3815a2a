"""A live cell for client tests: a worker running in a namespace of its own, and what
the tests of the node SDK and the session client share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import anyio

from eventsched.clients.node import Job, JobOutput
from eventsched.clients.session import Session
from eventsched.dispatch.worker import Worker
from eventsched.model.events import Services, SettingsChanged
from eventsched.model.keys import CellKeys
from eventsched.model.settings import DecisionSettings
from eventsched.projections import Outcome, read_node
from eventsched.store.append import append
from eventsched.store.client import RedisClient, Store
from tests.conftest import new_namespace, remove_namespace
from tests.harness import wait_for

EN_ZH = Services(asr=["en", "zh"], nmt=["en", "zh"], tts=["en", "zh"])
# Liveness scaled to a test; no queue: the tests name the reason a job could go nowhere
# (test_queue.py has the queue's own).
QUICK = DecisionSettings(heartbeat_fresh_ms=2_000, node_lost_ms=3_000, queue_wait_ms=0)


def steady() -> tuple[int, int, int]:
    """The load test nodes report: the SDK's default is this machine's own, which a busy
    machine (a load average of two cores) puts above the 95 % at which a node is
    overloaded and offered nothing."""
    return (10, 10, 10)


class Cell:
    """A cell with a live worker, in a namespace of its own; clients made here are
    closed, and the namespace removed, afterwards."""

    def __init__(self, store: Store, keys: CellKeys) -> None:
        self.store = store
        self.keys = keys
        self.clients: list[RedisClient] = []

    def client(self) -> RedisClient:
        made = self.store.client()
        self.clients.append(made)
        return made

    async def registered(self, *node_ids: str) -> None:
        """Wait until the worker has applied these nodes' registrations. A node and the
        gateway append from different clients, so a finalize could otherwise reach the
        log first and be rejected."""
        reader = self.client()
        for node_id in node_ids:
            await wait_for(partial(state_is, reader, self.keys, "up", node_id))


@asynccontextmanager
async def running_cell(store_url: str) -> AsyncIterator[Cell]:
    cell = Cell(Store(store_url), CellKeys("c0", new_namespace()))
    client = cell.client()
    worker = Worker(client, [cell.keys], lease_ms=500, block_ms=20, tick_ms=50)
    stop = anyio.Event()
    try:
        await append(client, cell.keys, SettingsChanged(settings=QUICK.differences()))
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run, stop)
            yield cell
            stop.set()
    finally:
        await remove_namespace(cell.clients[0], cell.keys.namespace)
        for made in cell.clients:
            await made.aclose()


async def collect(session: Session, count: int) -> list[Outcome]:
    found: list[Outcome] = []
    with anyio.fail_after(20):
        async for outcome in session.outcomes():
            found.append(outcome)
            if len(found) == count:
                return found
    return found


def echo(delays_ms: Callable[[Job], int]) -> Callable[[Job], Awaitable[JobOutput]]:
    async def handler(job: Job) -> JobOutput:
        await anyio.sleep(delays_ms(job) / 1000)
        return JobOutput(asr_text=f"heard {job.utterance_index}", nmt_text="translated")

    return handler


async def state_is(client: object, keys: CellKeys, state: str, node_id: str = "n1") -> bool:
    record = await read_node(client, keys, node_id)  # type: ignore[arg-type]
    return record is not None and record.state == state
