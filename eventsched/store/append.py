"""Appending events to a cell's log."""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio.client import Pipeline

from eventsched.model.events import ENTRY_FIELD, Event, encode_event
from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient, is_cluster, principal_of

__all__ = ["append", "append_exact", "append_many", "queue_submit", "source_of", "submit"]


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


def source_of(client: RedisClient, keys: CellKeys, role: str, name: str | None) -> str | None:
    """Where a client of ``role`` sends from: None (the log itself) for a trusted user,
    the principal's ingress for a confined one, which must be this role of this cell
    (and this ``name``, when given): a one-line ValueError otherwise."""
    principal = principal_of(client)
    if principal is None:
        return None
    if (principal.namespace, principal.cell) != (keys.namespace, keys.cell):
        raise ValueError(
            f"Redis user {principal.username} belongs to cell {principal.cell} of namespace"
            f" {principal.namespace}, not to {keys.cell} of {keys.namespace}"
        )
    if principal.role != role or (name is not None and principal.name != name):
        wanted = role if name is None else f"{role} {name}"
        raise ValueError(f"Redis user {principal.username} is not {wanted}")
    return principal.source


def queue_submit(pipe: Pipeline, keys: CellKeys, source: str | None, event: Event) -> None:
    """Queue what sends ``event``: an append to the log from a trusted client (``source``
    None), or from a confined principal an append to its own ingress and a ring of the
    cell's bell naming it (model.principals: the worker admits it to the log)."""
    if source is None:
        pipe.xadd(keys.log, {ENTRY_FIELD: encode_event(event)})
    else:
        pipe.xadd(keys.ingress(source), {ENTRY_FIELD: encode_event(event)})
        pipe.publish(keys.bell, source)


async def submit(client: RedisClient, keys: CellKeys, source: str | None, event: Event) -> str:
    """Send one event (see ``queue_submit``) in one round trip; returns the ID Redis gave
    it, in the log or in the ingress: a time on the server's clock either way."""
    if source is None:
        return await append(client, keys, event)
    if is_cluster(client):  # a cluster pipeline refuses PUBLISH: two round trips
        entry_id = await client.xadd(keys.ingress(source), {ENTRY_FIELD: encode_event(event)})
        await client.publish(keys.bell, source)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    async with client.pipeline(transaction=False) as pipe:
        queue_submit(pipe, keys, source, event)
        entry_id, _ = await pipe.execute()
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def append_exact(
    pipe: Pipeline,
    stream: str,
    entry_id: bytes | str,
    pairs: Iterable[tuple[bytes | str, bytes | str]],
) -> None:
    """Queue an XADD of these field pairs at this ID, in their order and with repeated
    names kept (redis-py's xadd takes a dict): copying or replaying an entry exactly."""
    pipe.execute_command("XADD", stream, entry_id, *[part for pair in pairs for part in pair])
