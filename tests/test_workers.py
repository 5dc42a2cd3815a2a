"""Several workers: one holds each role, the others stand by and take over; fencing,
takeover of pending entries, trimmed entries, and a flushed Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

import anyio
import pytest

from eventsched.dispatch.applier import APPLIER_GROUP, Applier, NotLeader
from eventsched.dispatch.worker import Worker, ensure_group
from eventsched.model.events import ENTRY_FIELD, encode_event
from eventsched.model.keys import CellKeys
from eventsched.store.client import Store, is_memory_url
from eventsched.store.streams import text, xreadgroup_raw
from tests.harness import Cell, finalize, node, ok, session, wait_for
from tests.servers import private_redis

pytestmark = pytest.mark.anyio


async def test_only_the_lease_holder_applies(cell: Cell) -> None:
    await cell.append(node("n1"), session("s1"), finalize("s1", 0))
    first = Worker(cell.client, [cell.keys], name="w1", lease_ms=60_000)
    assert await first.drain() > 0
    second = Worker(cell.client, [cell.keys], name="w2", lease_ms=60_000)
    with pytest.raises(NotLeader):
        await second.drain()
    # Fencing: a batch from a worker without the lease is refused inside the script.
    await cell.append(finalize("s1", 1))
    [(_, entries)] = await xreadgroup_raw(
        cell.client, APPLIER_GROUP, "w2", {cell.keys.log: ">"}, 10, None
    )
    with pytest.raises(NotLeader):
        await Applier(cell.client, cell.keys, holder="w2").apply(entries)
    assert len(await cell.decisions("d")) == 1
    # When w1 lets go, w2 takes over and applies what it had read, once.
    await first.release()
    await second.drain()
    assert [d["job"] for d in await cell.decisions("d")] == ["s1:0", "s1:1"]


async def test_a_standby_claims_the_pending_entries_of_a_dead_worker(cell: Cell) -> None:
    await cell.append(node("n1", max_concurrency=8), session("s1"))
    first = Worker(cell.client, [cell.keys], name="w1", lease_ms=60_000)
    await first.drain()
    await cell.append(*(finalize("s1", i) for i in range(5)))
    # w1 reads the new entries and dies before applying them (kill -9 between calls).
    await cell.client.xreadgroup(APPLIER_GROUP, "w1", {cell.keys.log: ">"}, count=3)
    await cell.client.delete(cell.keys.lease("dispatch"), cell.keys.lease("groups"))
    second = Worker(cell.client, [cell.keys], name="w2", lease_ms=60_000)
    await second.drain()
    assert [d["job"] for d in await cell.decisions("d")] == [f"s1:{i}" for i in range(5)]
    pending = await cell.client.xpending(cell.keys.log, APPLIER_GROUP)
    assert pending["pending"] == 0


async def test_a_trimmed_unapplied_entry_is_dead_lettered(cell: Cell) -> None:
    await cell.append(node("n1"), session("s1"))
    first = Worker(cell.client, [cell.keys], name="w1", lease_ms=60_000)
    await first.drain()
    finalize_id = (await cell.append(finalize("s1", 0)))[0]
    await cell.client.xreadgroup(APPLIER_GROUP, "w1", {cell.keys.log: ">"})
    await cell.client.xdel(cell.keys.log, finalize_id)  # an operator's careless trim
    await first.release()
    await Worker(cell.client, [cell.keys], name="w2", lease_ms=60_000).drain()
    [dead] = await cell.dlq()
    assert dead["log_id"] == finalize_id and dead["reason"].startswith("entry_deleted")
    assert await cell.decisions("d") == []


async def test_a_running_worker_hands_over_on_release_and_survives_a_lease_loss(
    cell: Cell,
) -> None:
    stop_first, stop_second = anyio.Event(), anyio.Event()
    first = Worker(cell.client, [cell.keys], name="w1", lease_ms=300, block_ms=20, tick_ms=50)
    second = Worker(cell.client, [cell.keys], name="w2", lease_ms=300, block_ms=20, tick_ms=50)

    async def dispatched() -> int:
        return len(await cell.decisions("d"))

    async with anyio.create_task_group() as group:
        group.start_soon(first.run, stop_first)
        await wait_for(lambda: _held_by(cell, "w1"))
        group.start_soon(second.run, stop_second)
        await cell.append_live(node("n1", max_concurrency=8), session("s1"), finalize("s1", 0))
        await wait_for(lambda: _count_at_least(dispatched, 1))
        stop_first.set()  # two-stage stop: the batch in hand, then the leases go
        await wait_for(lambda: _held_by(cell, "w2"))
        await cell.append_live(finalize("s1", 1))
        await wait_for(lambda: _count_at_least(dispatched, 2))
        # Steal w2's lease: its next batch is refused and it stands by, then retakes it.
        await cell.client.set(cell.keys.lease("dispatch"), "intruder", px=200)
        await cell.append_live(finalize("s1", 2))
        await wait_for(lambda: _count_at_least(dispatched, 3))
        stop_second.set()
    assert [d["job"] for d in await cell.decisions("d")] == ["s1:0", "s1:1", "s1:2"]
    ticks = [e for e in await cell.stream(cell.keys.log) if '"tick"' in e.get(ENTRY_FIELD, "")]
    assert ticks, "the ticker appended ticks"
    assert await cell.client.exists(cell.keys.lease("dispatch")) == 0


async def _held_by(cell: Cell, name: str) -> bool:
    holder = await cell.client.get(cell.keys.lease("dispatch"))
    return holder is not None and text(holder) == name


async def _count_at_least(count: Callable[[], Awaitable[int]], least: int) -> bool:
    return await count() >= least


@pytest.fixture
async def flushable_url(store_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """FLUSHALL must never touch the shared Redis: the real variant runs privately."""
    with ExitStack() as stack:
        if not is_memory_url(store_url):
            store_url = stack.enter_context(private_redis(tmp_path))
        yield store_url


async def test_an_idle_worker_recovers_from_flushall(flushable_url: str) -> None:
    store = Store(flushable_url)
    client, producer = store.client(), store.client()
    keys = CellKeys("c0", "flush")
    cell = Cell(producer, keys)
    worker = Worker(client, [keys], name="w1", lease_ms=300, block_ms=20, tick_ms=50)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run, stop)
            await cell.append_live(node("n1"), session("s1"), finalize("s1", 0))
            await wait_for(lambda: _has_decisions(cell))
            await producer.flushall()
            await cell.append_live(node("n2"), session("s2"), finalize("s2", 0))
            await wait_for(lambda: _has_decisions(cell))
            stop.set()
        assert [d["node"] for d in await cell.decisions("d")] == ["n2"]
    finally:
        await client.aclose()
        await producer.aclose()


async def _has_decisions(cell: Cell) -> bool:
    return bool(await cell.decisions("d"))


def test_tick_encoding_is_the_canonical_event() -> None:
    from eventsched.model.events import Tick

    assert encode_event(Tick()) == '{"type":"tick","v":1}'


async def test_ensure_group_is_idempotent(cell: Cell) -> None:
    for _ in range(2):
        await ensure_group(cell.client, cell.keys.log, APPLIER_GROUP)
    await cell.step(node("n1"), session("s1"), finalize("s1", 0), ok("s1:0", 1, "n1"))
    assert [o["st"] for o in await cell.outputs("s1")] == ["ok"]
