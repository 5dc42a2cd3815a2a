"""fakeredis and the real Redis make identical decisions and leave identical state."""

from __future__ import annotations

from typing import Any

import pytest

from eventsched.model.events import (
    NodeDeregistered,
    NodeDraining,
    Pool,
    PoolsConfigured,
    SessionClosed,
)
from eventsched.model.keys import CellKeys
from eventsched.store.client import MEMORY_URL, RedisClient, Store
from eventsched.store.streams import text, xrange_raw
from tests.conftest import REAL_AVAILABLE, REAL_URL, new_namespace, remove_namespace
from tests.harness import Cell, beat, error, finalize, node, ok, session

pytestmark = pytest.mark.anyio


async def _scenario(cell: Cell) -> None:
    await cell.configure(max_attempts=2, rate_burst=4)
    await cell.step(
        node("a1", max_concurrency=2),
        node("a2", langs=("en", "ja", "zh"), max_concurrency=3),
        node("b1", langs=("de", "en"), max_concurrency=1),
        *(session(f"s{i}", "en", "zh" if i % 3 else "de") for i in range(6)),
    )
    for round_index in range(3):
        cell.advance(150)
        await cell.step(*(finalize(f"s{i}", round_index) for i in range(6)))
        cell.advance(40)
        await cell.step(beat("a1", cpu=50 + round_index * 25), beat("a2"), beat("b1"))
        jobs = await cell.dispatched_to()
        for job_id, node_id in sorted(jobs.items()):
            cell.advance(7)
            state = await cell.hash(cell.keys.job(job_id))
            if state["st"] != "run":
                continue
            attempt = int(state["att"])
            if job_id.endswith(":1"):  # utterance 1 of every session fails each attempt
                await cell.step(error(job_id, attempt, node_id))
            else:
                await cell.step(ok(job_id, attempt, node_id, tts_ms=100 * attempt))
    await cell.step(
        NodeDraining(node_id="a2"),
        PoolsConfigured(pools=[Pool(name="p", languages=["en", "zh"])]),
    )
    await cell.step(finalize("s1", 3), finalize("s2", 3), NodeDeregistered(node_id="a1"))
    await cell.append_fields({"bad": "1"})
    await cell.step(SessionClosed(session_id="s0"), finalize("s0", 9))


async def _dump(client: RedisClient, keys: CellKeys) -> dict[str, Any]:
    state: dict[str, Any] = {}
    prefix_length = len(keys.prefix)
    async for raw_key in client.scan_iter(match=keys.all_pattern):
        key = text(raw_key)
        kind = text(await client.type(key))
        name = key[prefix_length:]
        if kind == "stream":
            entries = await xrange_raw(client, key)
            # IDs made with "*" (inboxes, dead letters) carry the server's clock; the
            # log, decisions and session outputs have IDs fixed by the events.
            keep_ids = name in ("log", "decisions") or name.startswith("out:")
            state[name] = [(eid if keep_ids else None, fields) for eid, fields in entries]
        elif kind == "hash":
            state[name] = await client.hgetall(key)
        elif kind == "zset":
            state[name] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            state[name] = sorted(await client.smembers(key))
        else:
            state[name] = await client.get(key)
    return state


@pytest.mark.skipif(not REAL_AVAILABLE, reason="needs the real Redis")
async def test_fake_and_real_leave_the_same_bytes() -> None:
    dumps = []
    for url in (MEMORY_URL, REAL_URL):
        client = Store(url).client()
        namespace = new_namespace()
        keys = CellKeys("c0", namespace)
        try:
            await _scenario(Cell(client, keys))
            dumps.append(await _dump(client, CellKeys("c0", namespace)))
        finally:
            await remove_namespace(client, namespace)
            await client.aclose()
    fake, real = dumps
    assert sorted(fake) == sorted(real)
    for name in fake:
        assert fake[name] == real[name], name
    assert len(fake["decisions"]) > 30 and fake["dlq"]
