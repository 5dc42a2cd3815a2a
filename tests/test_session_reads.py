"""The session client's read, on both stores: it names the output streams of the
sessions that wait for an outcome and the client's wake stream, not every open session;
a session that starts waiting while the read is blocked wakes it, so its outcome comes
at once, not after the read's timeout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from eventsched.clients.session import SessionClient
from eventsched.store import streams
from eventsched.store.append import submit
from eventsched.store.client import RedisClient
from tests.harness import Cell, node, ok, wait_for

pytestmark = pytest.mark.anyio

_BLOCK_MS = 30_000  # a read that ends by its timeout would fail the test's wait


async def test_a_read_names_the_sessions_that_wait_and_wakes_for_a_new_one(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[set[str]] = []
    real_read = streams.xread_raw

    async def recorded(client: RedisClient, cursors: Mapping[str, str], *args: Any) -> Any:
        reads.append(set(cursors))
        return await real_read(client, cursors, *args)

    monkeypatch.setattr("eventsched.clients.session.xread_raw", recorded)
    await cell.append_live(node("n1"))
    await cell.apply()  # the worker's leases stay: appends are decided at once
    keys = cell.keys
    async with SessionClient(cell.client, keys, block_ms=_BLOCK_MS) as gateway:
        sessions = [await gateway.open(f"s{i}", "en", "zh") for i in range(20)]
        wake = next(iter(reads[-1]))

        async def reading(streams: set[str]) -> bool:
            return bool(reads) and reads[-1] == streams

        await wait_for(lambda: reading({wake}))  # nothing awaited: the wake stream only
        await sessions[7].finalize(0, "pause", "audio/s7/0", 1000)
        await wait_for(lambda: reading({wake, keys.output("s7")}))
        await submit(cell.client, keys, None, ok("s7:0", 1, "n1"))
        with anyio.fail_after(10):  # well inside the read's own timeout
            outcome = await anext(sessions[7].outcomes())
        assert (outcome.utterance_index, outcome.status) == (0, "ok")
        await wait_for(lambda: reading({wake}))
    assert wake == keys.wake(wake.rpartition(":")[2]) and wake.startswith(f"{keys.namespace}:")
    assert 0 < await cell.client.pttl(wake) <= 600_000  # a client gone leaves it briefly
