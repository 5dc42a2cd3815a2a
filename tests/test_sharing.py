"""Workers sharing a namespace's cells (``worker --all-cells``): each role of each cell
held by one worker, about 1/N of them each, new cells picked up, and the roles of a
worker that leaves or dies shared out again; the assignment every worker computes."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest

from eventsched.dispatch.sharing import Membership, assign
from eventsched.dispatch.worker import Worker
from eventsched.model.keys import ROLES, CellKeys, NamespaceKeys
from eventsched.projections.directory import find_cells, list_in_directory, read_directory
from eventsched.store.client import RedisClient
from eventsched.store.streams import text
from tests.conftest import new_namespace, remove_namespace
from tests.harness import Cell, finalize, node, session, wait_for

ROLE_IDS = [(f"c{i}", role) for i in range(16) for role in ROLES]


def test_every_role_goes_to_one_worker_and_each_gets_its_share_within_one() -> None:
    for count in (1, 2, 3, 4, 5, 7, 48, 60):
        workers = [f"w{i}" for i in range(count)]
        chosen = assign(ROLE_IDS, workers)
        assert sorted(chosen) == sorted(ROLE_IDS)
        shares = Counter(chosen.values())
        assert max(shares.values()) - min(shares.get(w, 0) for w in workers) <= 1


def test_every_worker_computes_the_same_assignment_whatever_order_it_sees() -> None:
    workers = ["w3", "w1", "w2", "w0"]
    assert assign(ROLE_IDS, workers) == assign(reversed(ROLE_IDS), sorted(workers))


def test_a_worker_joining_or_leaving_moves_few_roles_beside_its_own() -> None:
    four = assign(ROLE_IDS, ["w0", "w1", "w2", "w3"])
    five = assign(ROLE_IDS, ["w0", "w1", "w2", "w3", "w4"])
    moved = [role for role in ROLE_IDS if four[role] != five[role]]
    taken = [role for role in moved if five[role] == "w4"]
    assert len(taken) in (9, 10)  # w4's share of 48 over 5
    assert len(moved) - len(taken) <= 6, "a join reshuffled the rest"
    three = assign(ROLE_IDS, ["w0", "w1", "w3"])
    moved = [role for role in ROLE_IDS if four[role] != three[role]]
    left = [role for role in moved if four[role] == "w2"]
    assert len(left) == 12 and len(moved) - len(left) <= 6


@pytest.mark.anyio
async def test_membership_is_by_the_redis_clock_and_ends_when_not_renewed(
    client: RedisClient,
) -> None:
    namespace = new_namespace()
    first = Membership(client, namespace, "wa", ttl_ms=60_000)
    brief = Membership(client, namespace, "wb", ttl_ms=40)
    try:
        assert await first.renew() == ["wa"]
        assert await brief.renew() == ["wa", "wb"]

        async def only_first() -> bool:
            return await first.renew() == ["wa"]

        await wait_for(only_first)  # wb's 40 ms passed with no renewal
        await first.leave()
        assert await client.zcard(NamespaceKeys(namespace).workers) == 0
    finally:
        await client.delete(NamespaceKeys(namespace).workers)


@pytest.fixture
async def namespace(client: RedisClient) -> AsyncIterator[str]:
    name = new_namespace()
    yield name
    await remove_namespace(client, name)
    await client.delete(NamespaceKeys(name).workers, NamespaceKeys(name).directory)


async def _holders(client: RedisClient, cells: list[CellKeys]) -> dict[tuple[str, str], str]:
    found = {}
    for keys in cells:
        for role in ROLES:
            holder = await client.get(keys.lease(role))
            if holder is not None:
                found[(keys.cell, role)] = text(holder)
    return found


def _worker(client: RedisClient, name: str, namespace: str) -> Worker:
    return Worker(client, [], name, lease_ms=300, block_ms=20, tick_ms=50, all_cells_of=namespace)


@pytest.mark.anyio
async def test_shared_workers_split_the_roles_pick_up_new_cells_and_take_over_a_leaver(
    client: RedisClient, namespace: str
) -> None:
    cells = [CellKeys(f"c{i}", namespace) for i in range(4)]
    await client.xadd(cells[0].log, {"e": "{}"})  # a cell with a log only: found by SCAN
    await list_in_directory(client, cells[1:3])
    workers = [_worker(client, name, namespace) for name in ("wa", "wb", "wc")]
    stops = [anyio.Event() for _ in workers]

    async def shared_out(count: int, by: set[str]) -> bool:
        held = await _holders(client, cells[:count])
        shares = Counter(held.values())
        return (
            len(held) == count * len(ROLES)
            and set(shares) == by
            and max(shares.values()) - min(shares.values()) <= 1
        )

    async with anyio.create_task_group() as group:
        for worker, stop in zip(workers, stops, strict=True):
            group.start_soon(worker.run, stop)
        await wait_for(lambda: shared_out(3, {"wa", "wb", "wc"}))
        await list_in_directory(client, cells[3:])  # a cell added while they run
        await wait_for(lambda: shared_out(4, {"wa", "wb", "wc"}))
        # Every worker's view gives each role to the worker holding it.
        held = await _holders(client, cells)
        for worker in workers:
            assert {role: worker.assigned[role] for role in held} == held  # type: ignore[index]
        # The cells work: a finalize in the last cell is dispatched by whoever holds it.
        last = Cell(client, cells[3])
        await last.append_live(node("n1"), session("s1"), finalize("s1", 0))

        async def dispatched() -> bool:
            return len(await last.decisions("d")) == 1

        await wait_for(dispatched)
        stops[0].set()  # wa leaves (two-stage): the others share its roles at once
        await wait_for(lambda: shared_out(4, {"wb", "wc"}))
        for stop in stops[1:]:
            stop.set()
    assert await _holders(client, cells) == {}  # every lease released on the way out
    assert await client.zcard(NamespaceKeys(namespace).workers) == 0
    assert [keys.cell for keys in await find_cells(client, namespace)] == [
        "c0", "c1", "c2", "c3",
    ]  # fmt: skip
    assert set(await read_directory(client, namespace)) == {"c0", "c1", "c2", "c3"}


@pytest.mark.anyio
async def test_the_roles_of_a_worker_that_dies_are_taken_once_its_membership_ends(
    client: RedisClient, namespace: str
) -> None:
    cells = [CellKeys(f"c{i}", namespace) for i in range(2)]
    await list_in_directory(client, cells)
    survivor, victim = _worker(client, "wa", namespace), _worker(client, "wb", namespace)
    stop = anyio.Event()

    async def held_by(names: set[str]) -> bool:
        held = await _holders(client, cells)
        return len(held) == 2 * len(ROLES) and set(held.values()) == names

    async with anyio.create_task_group() as group:
        group.start_soon(survivor.run, stop)
        async with anyio.create_task_group() as victim_life:
            victim_life.start_soon(victim.run, anyio.Event())
            await wait_for(lambda: held_by({"wa", "wb"}))
            victim_life.cancel_scope.cancel()
        # It died without a word: what its shielded release undid is put back as a
        # dead worker leaves it, leases and membership left to run out.
        seconds, micros = await client.time()
        for keys in cells:
            for role in ROLES:
                if (victim.assigned or {}).get((keys.cell, role)) == "wb":
                    await client.set(keys.lease(role), "wb", px=300, nx=True)
        await client.zadd(
            NamespaceKeys(namespace).workers, {"wb": seconds * 1000 + micros // 1000 + 900}
        )
        await wait_for(lambda: held_by({"wa"}))
        stop.set()
