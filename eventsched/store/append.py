"""Appending events to a cell's log."""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio.client import Pipeline

from eventsched.model.events import ENTRY_FIELD, Event, encode_event
from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient

__all__ = ["append", "append_exact", "append_many"]


async def append(client: RedisClient, keys: CellKeys, event: Event) -> str:
    """Append one event; returns its log ID, which is also its event time."""
    entry_id = await client.xadd(keys.log, {ENTRY_FIELD: encode_event(event)})
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def append_many(client: RedisClient, keys: CellKeys, events: Iterable[Event]) -> list[str]:
    """Append several events in one round trip, in order."""
    async with client.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(keys.log, {ENTRY_FIELD: encode_event(event)})
        ids = await pipe.execute()
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def append_exact(
    pipe: Pipeline,
    stream: str,
    entry_id: bytes | str,
    pairs: Iterable[tuple[bytes | str, bytes | str]],
) -> None:
    """Queue an XADD of these field pairs at this ID, in their order and with repeated
    names kept (redis-py's xadd takes a dict): copying or replaying an entry exactly."""
    pipe.execute_command("XADD", stream, entry_id, *[part for pair in pairs for part in pair])
