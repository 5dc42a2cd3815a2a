"""Redis losing writes it acknowledged, seen from the clients, on fakeredis and on the
real Redis: a finalize that vanished is sent again and served late, a session or a node
the cell lost is opened or registered again, an utterance that never gets an outcome is
given up as lost, and a cell flushed mid-run carries on."""

from __future__ import annotations

import anyio
import pytest

from eventsched.clients.node import Node
from eventsched.clients.session import SessionClient
from eventsched.model.events import SessionClosed, SessionOpened, UtteranceFinalized
from eventsched.store.client import unlink_matching
from eventsched.store.streams import read_stream
from tests.harness import wait_for
from tests.live import EN_ZH, Cell, collect, echo, running_cell, state_is, steady

pytestmark = pytest.mark.anyio


class ForgetfulRedis(SessionClient):
    """A session client whose Redis acknowledges some finalizes and then loses them, as
    a crash with ``appendfsync everysec`` does: ``to_lose[index]`` sends of utterance
    ``index`` are acknowledged and never reach the log."""

    def __init__(self, *args: object, to_lose: dict[int, int], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.to_lose = to_lose

    async def emit(
        self, event: SessionOpened | UtteranceFinalized | SessionClosed, wake: str | None = None
    ) -> str:
        if isinstance(event, UtteranceFinalized) and self.to_lose.get(event.utterance_index):
            self.to_lose[event.utterance_index] -= 1
            return "1-0"  # what a real append returns; the write is gone
        return await super().emit(event, wake)


def gateway_of(
    cell: Cell, resend_after_s: float = 0.4, lose: dict[int, int] | None = None
) -> ForgetfulRedis:
    return ForgetfulRedis(
        cell.client(),
        cell.keys,
        block_ms=20,
        resend_after_s=resend_after_s,
        max_sends=3,
        to_lose=dict(lose or {}),
    )


def serving(cell: Cell) -> Node:
    return Node(
        cell.client(), cell.keys, "n1", EN_ZH, 8, echo(lambda _: 5), heartbeat_s=0.2, load=steady
    )


async def output_ids(cell: Cell, session_id: str) -> list[tuple[str, str]]:
    stream = cell.keys.output(session_id)
    return [(entry_id, f["idx"]) async for entry_id, f in read_stream(cell.client(), stream)]


async def test_a_finalize_redis_lost_is_sent_again_and_served_in_order(store_url: str) -> None:
    async with running_cell(store_url) as cell:
        async with serving(cell), gateway_of(cell, lose={1: 1}) as gateway:
            await cell.registered("n1")
            session = await gateway.open("s1", "en", "zh")
            for index in range(3):
                await session.finalize(index, "pause", f"audio/{index}", 800)
            outcomes = await collect(session, 3)
            await session.close()
        assert [(o.utterance_index, o.status) for o in outcomes] == [(i, "ok") for i in range(3)]
        assert (session.finalized, session.resent, session.lost) == (3, 1, 0)
        # The cell served 1 after 2 and put it after 2's entry; the client reordered.
        assert await output_ids(cell, "s1") == [("1-0", "0"), ("3-0", "2"), ("3-1", "1")]


async def test_an_utterance_that_never_gets_an_outcome_is_given_up_as_lost(
    store_url: str,
) -> None:
    async with running_cell(store_url) as cell:
        async with serving(cell), gateway_of(cell, lose={0: 3}) as gateway:
            await cell.registered("n1")
            session = await gateway.open("s1", "en", "zh")
            await session.finalize(0, "pause", "audio/0", 800)
            await session.finalize(1, "pause", "audio/1", 800)
            await session.close()
            with anyio.fail_after(20):
                outcomes = [o async for o in session.outcomes()]  # ends: nothing waits
        assert [(o.utterance_index, o.status) for o in outcomes] == [(0, "lost"), (1, "ok")]
        assert (session.finalized, session.resent, session.lost) == (2, 2, 1)


async def test_a_session_the_cell_lost_is_opened_again(store_url: str) -> None:
    async with running_cell(store_url) as cell:
        async with serving(cell), gateway_of(cell) as gateway:
            await cell.registered("n1")
            session = await gateway.open("s1", "en", "zh")
            await session.finalize(0, "pause", "audio/0", 800)
            [first] = await collect(session, 1)
            reader = cell.client()
            await reader.delete(cell.keys.session("s1"), cell.keys.output("s1"))
            await session.finalize(1, "pause", "audio/1", 800)
            [second] = await collect(session, 1)
            await session.close()
        assert [(o.utterance_index, o.status) for o in (first, second)] == [(0, "ok"), (1, "ok")]
        assert session.resent == 1  # at the notice, not after resend_after_s
        # The notice took 1's place; 1's outcome came after it.
        assert await output_ids(cell, "s1") == [("2-0", "1"), ("2-1", "1")]


async def test_a_stream_begun_again_behind_the_reader_is_read_again(store_url: str) -> None:
    async with running_cell(store_url) as cell:
        async with serving(cell), gateway_of(cell, 1000, lose={1: 1}) as gateway:
            await cell.registered("n1")
            session = await gateway.open("s1", "en", "zh")
            for index in range(3):
                await session.finalize(index, "pause", f"audio/{index}", 800)
            reader = cell.client()
            await wait_for(lambda: _length_is(reader, cell.keys.output("s1"), 2))
            stream = cell.keys.output("s1")

            async def read_both() -> bool:  # the client has read 2's outcome (and holds it)
                return gateway._cursors.get(stream) == "3-0"

            await wait_for(read_both)
            # The output stream is lost: 1's late outcome gets its own place, 2-0, below
            # the 3-0 the client has read to.
            await reader.delete(cell.keys.output("s1"))
            await gateway.resend_now()
            outcomes = await collect(session, 3)
            await session.close()
        assert [o.utterance_index for o in outcomes] == [0, 1, 2]
        assert await output_ids(cell, "s1") == [("2-0", "1")]


async def test_a_flushed_cell_carries_on(store_url: str) -> None:
    """Everything of the cell is deleted mid-run (FLUSHALL): the worker makes its groups
    again, the node registers again, the session is opened again, and every finalize
    gets its outcome."""
    async with running_cell(store_url) as cell:
        node = serving(cell)
        async with node, gateway_of(cell) as gateway:
            await cell.registered("n1")
            session = await gateway.open("s1", "en", "zh")
            await session.finalize(0, "pause", "audio/0", 800)
            [before] = await collect(session, 1)
            reader = cell.client()
            await unlink_matching(reader, cell.keys.all_pattern)
            await wait_for(lambda: state_is(reader, cell.keys, "up"))
            await session.finalize(1, "pause", "audio/1", 800)
            await session.finalize(2, "pause", "audio/2", 800)
            after = await collect(session, 2)
            await session.close()
        assert [(o.utterance_index, o.status) for o in [before, *after]] == [
            (0, "ok"),
            (1, "ok"),
            (2, "ok"),
        ]
        assert node.reregistered == 1
        assert session.lost == 0


async def _length_is(client: object, stream: str, length: int) -> bool:
    return int(await client.xlen(stream)) == length  # type: ignore[attr-defined]
