"""Choosing cells from the directory: a session's cell by its pair and load, a node's by
what it serves; the directory's offers as workers write them and as hand edits leave
them; and a gateway over two cells reading each with one client."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest

from eventsched.clients.cells import (
    Gateway,
    assign_node_cell,
    choose_node_cell,
    choose_session_cell,
)
from eventsched.clients.node import Node
from eventsched.dispatch.worker import Worker
from eventsched.model.events import Services
from eventsched.model.keys import CellKeys, NamespaceKeys
from eventsched.projections.directory import CellOffer, publish_offer, read_directory
from eventsched.store.client import RedisClient
from tests.conftest import new_namespace, remove_namespace
from tests.harness import wait_for
from tests.live import echo, steady

OFFERS = {
    "c0": CellOffer("c0", nodes=2, sessions=4, pairs={"en>zh": 4, "zh>en": 4}),
    "c1": CellOffer("c1", nodes=3, sessions=3, pairs={"en>zh": 2, "en>ja": 6}),
    "c2": CellOffer("c2", nodes=1, sessions=0, pairs={"de>en": 1}),
}


def test_a_session_goes_where_its_pair_has_the_fewest_sessions_per_slot() -> None:
    nothing: Counter[str] = Counter()
    assert choose_session_cell(OFFERS, "s1", "en>zh", nothing) == "c0"  # 4 per 4 slots, not 3 per 2
    assert choose_session_cell(OFFERS, "s1", "zh>en", nothing) == "c0"  # only c0 serves it
    assert choose_session_cell(OFFERS, "s1", "en>ja", nothing) == "c1"
    # What this gateway placed since the offers counts: c0 fills up, c1 takes the next.
    assert choose_session_cell(OFFERS, "s1", "en>zh", Counter({"c0": 4})) == "c1"
    # No cell serves it: the least loaded cell, where it waits or is rejected.
    assert choose_session_cell(OFFERS, "s1", "fr>en", nothing) == "c2"
    with pytest.raises(LookupError, match="cells --add"):
        choose_session_cell({}, "s1", "en>zh", nothing)


def test_ties_spread_by_the_session_id() -> None:
    twins = {cell: CellOffer(cell, nodes=1, pairs={"en>zh": 2}) for cell in ("a0", "a1", "a2")}
    chosen = {choose_session_cell(twins, f"s{i}", "en>zh", Counter()) for i in range(30)}
    assert chosen == {"a0", "a1", "a2"}


def test_a_node_joins_the_cell_that_most_needs_what_it_serves() -> None:
    assert choose_node_cell(OFFERS, "n1", ["en>zh", "zh>en"]) == "c2"  # serves neither
    assert choose_node_cell(OFFERS, "n1", ["de>en"]) in {"c0", "c1"}
    assert choose_node_cell(OFFERS, "n1", ["en>ja"]) == "c2"  # c0 and c2 serve none; fewer nodes
    with pytest.raises(LookupError):
        choose_node_cell({}, "n1", ["en>zh"])


@pytest.fixture
async def namespace(client: RedisClient) -> AsyncIterator[str]:
    name = new_namespace()
    yield name
    await remove_namespace(client, name)


@pytest.mark.anyio
async def test_offers_come_from_the_snapshot_and_bad_entries_read_as_empty(
    client: RedisClient, namespace: str
) -> None:
    snapshot = {
        "nodes_by_state": {"ready": 2, "overloaded": 1, "lost": 4},
        "sessions": {"open": 5, "closed": 9},
        "pools": {"p": {"free_slots": 3}, "q": {"free_slots": 4}},
        "pair_slots": {"en>zh": 6},
    }
    await publish_offer(client, CellKeys("c0", namespace), snapshot)
    directory = NamespaceKeys(namespace).directory
    await client.hset(directory, mapping={"c1": b"\xff{not json", "Bad Name!": "{}"})
    offers = await read_directory(client, namespace)
    assert sorted(offers) == ["c0", "c1"]  # a name that is no cell's is skipped
    c0 = offers["c0"]
    assert (c0.nodes, c0.sessions, c0.free_slots, dict(c0.pairs)) == (3, 5, 7, {"en>zh": 6})
    assert c0.at_ms > 0
    assert offers["c1"] == CellOffer("c1")  # whatever bytes: an empty offer, no error
    assert await assign_node_cell(client, namespace, "n1", ["en>zh"]) == CellKeys("c1", namespace)


@pytest.mark.anyio
async def test_a_gateway_opens_sessions_where_their_pairs_are_served_one_reader_a_cell(
    client: RedisClient, namespace: str
) -> None:
    zh, ja = CellKeys("c0", namespace), CellKeys("c1", namespace)
    worker = Worker(client, [zh, ja], "w1", lease_ms=300, block_ms=20, tick_ms=50)
    stop = anyio.Event()
    nodes = [
        Node(client, keys, f"n-{lang}", Services(asr=["en"], nmt=["en", lang], tts=[lang]), 2,
             echo(lambda job: 1), semantic_languages=["en", lang], heartbeat_s=0.2,
             load=steady)
        for keys, lang in ((zh, "zh"), (ja, "ja"))
    ]  # fmt: skip

    async def offered() -> bool:
        offers = await read_directory(client, namespace)
        return all(offers.get(k.cell, CellOffer(k.cell)).nodes == 1 for k in (zh, ja))

    async with anyio.create_task_group() as group:
        group.start_soon(worker.run, stop)
        for running in nodes:
            group.start_soon(running.run)
        await wait_for(offered)  # the dispatch holders wrote both cells' offers
        async with Gateway(client, namespace, block_ms=20) as gateway:
            opened = [await gateway.open(f"s{i}", "en", "zh" if i % 2 else "ja") for i in range(6)]
            assert sorted(gateway.cells) == ["c0", "c1"]  # one session client per cell
            for session in opened:
                await session.finalize(0, "pause", "audio/x.opus", 1000)
                await session.close()
            for session in opened:
                outcomes = [outcome async for outcome in session.outcomes()]
                assert [(o.utterance_index, o.status) for o in outcomes] == [(0, "ok")], outcomes
        for running in nodes:
            await running.drain()
        stop.set()
    for i in range(6):
        cell = zh if i % 2 else ja
        assert await client.exists(cell.session(f"s{i}")) == 1
