"""Appending events to a cell's log, and a trusted producer's submit, which is decided in
the same call when the cell has nothing waiting (``decide_at_append``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from weakref import WeakKeyDictionary

from redis.asyncio.client import Pipeline

from eventsched.model.entries import APPLY_DEFAULTS, Arg, admitted_args, fields_args
from eventsched.model.events import ENTRY_FIELD, Event, encode_event
from eventsched.model.keys import APPLIER_GROUP, CellKeys
from eventsched.store.client import RedisClient, is_cluster, principal_of
from eventsched.store.scripts import Library
from eventsched.store.streams import text

__all__ = [
    "append",
    "append_exact",
    "append_many",
    "decide_at_append",
    "queue_submit",
    "source_of",
    "submit",
]

_ENTRY: Final = ENTRY_FIELD.encode()
_APPLY: WeakKeyDictionary[RedisClient, Library] = WeakKeyDictionary()


async def append(client: RedisClient, keys: CellKeys, event: Event) -> str:
    """Append one event; returns its log ID, which is also its event time."""
    entry_id = await client.xadd(keys.log, {ENTRY_FIELD: encode_event(event)})
    return text(entry_id)


async def append_many(client: RedisClient, keys: CellKeys, events: Iterable[Event]) -> list[str]:
    """Append several events in one round trip, in order."""
    async with client.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(keys.log, {ENTRY_FIELD: encode_event(event)})
        ids = await pipe.execute()
    return [text(i) for i in ids]


async def decide_at_append(
    client: RedisClient,
    keys: CellKeys,
    event: Event,
    ack: tuple[str, str] | None = None,
    wake: str | None = None,
) -> str:
    """Append one event to the log and, when the log holds nothing unapplied and a worker
    holds the cell's dispatch role, apply it there in the same script call (apply.lua's
    append mode): no process stands between a finalize and its decision. Otherwise it
    waits in the log and the worker applies it in order, as any append. Either way it is
    applied at its own log ID with the arguments the worker would work out from the log
    (model.entries, on the same bytes), so replay is byte for byte the same. ``ack``
    (node id, inbox entry ID) acknowledges a node's job in the same call as its result;
    ``wake`` (a ``CellKeys.wake`` stream) rings a session client's reader in it.
    Returns the log ID."""
    raw = encode_event(event).encode()  # the bytes a read of the log gets
    kind, values = fields_args({_ENTRY: raw})
    also = "" if ack is None else f"ack {ack[0]} {ack[1]}"
    if wake is not None:
        also = f"wake {wake}"
    args: list[Arg] = [keys.prefix, APPLIER_GROUP, "", *APPLY_DEFAULTS, "append", also, 1]
    args += admitted_args("", [_ENTRY, raw], "", kind, values)
    apply = _APPLY.get(client)
    if apply is None:
        apply = _APPLY[client] = Library(client, "apply")
    reply = await apply(keys=keys.script_keys("apply"), args=args)
    return text(reply[4][0])


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


def queue_submit(pipe: Pipeline, keys: CellKeys, principal_source: str, event: Event) -> None:
    """Queue what a confined principal sends: an append to its own ingress and a ring of
    the cell's bell naming it (model.principals: the worker admits it to the log)."""
    pipe.xadd(keys.ingress(principal_source), {ENTRY_FIELD: encode_event(event)})
    pipe.publish(keys.bell, principal_source)


async def submit(client: RedisClient, keys: CellKeys, source: str | None, event: Event) -> str:
    """Send one event in one round trip: from a trusted client (``source`` None) decided
    at append, from a confined principal to its ingress (``queue_submit``). Returns the
    ID Redis gave it, in the log or in the ingress: a time on the server's clock."""
    if source is None:
        return await decide_at_append(client, keys, event)
    if is_cluster(client):  # a cluster pipeline refuses PUBLISH: two round trips
        entry_id = await client.xadd(keys.ingress(source), {ENTRY_FIELD: encode_event(event)})
        await client.publish(keys.bell, source)
        return text(entry_id)
    async with client.pipeline(transaction=False) as pipe:
        queue_submit(pipe, keys, source, event)
        entry_id, _ = await pipe.execute()
    return text(entry_id)


def append_exact(
    pipe: Pipeline,
    stream: str,
    entry_id: bytes | str,
    pairs: Iterable[tuple[bytes | str, bytes | str]],
) -> None:
    """Queue an XADD of these field pairs at this ID, in their order and with repeated
    names kept (redis-py's xadd takes a dict): copying or replaying an entry exactly."""
    pipe.execute_command("XADD", stream, entry_id, *[part for pair in pairs for part in pair])
