"""Typed reads of Redis streams (and hashes). redis-py types stream replies loosely (bytes, str or
None everywhere); eventsched's clients return bytes, and these helpers say so once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster

from eventsched.model.limits import RepeatedFields, text
from eventsched.store.client import RedisClient

__all__ = [
    "RawEntry",
    "entries_of",
    "id_after",
    "last_id",
    "next_id",
    "parse_id",
    "read_hash",
    "read_stream",
    "text",
    "xrange_raw",
    "xread_raw",
    "xreadgroup_raw",
]

RawEntry = tuple[bytes, dict[bytes, bytes]]
StreamReply = list[tuple[bytes, list[RawEntry]]]

_PAGE = 2000


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream ID as (ms, seq) integers: IDs compare as numbers, never as strings."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def last_id(client: RedisClient, stream: str) -> str | None:
    """The ID of the stream's newest entry; None when it is empty or missing."""
    newest = cast(list[RawEntry], await client.xrevrange(stream, count=1))
    return text(newest[0][0]) if newest else None


def next_id(entry_id: str) -> str:
    """The smallest ID after ``entry_id``."""
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}"


def id_after(a: str, b: str) -> bool:
    return parse_id(a) > parse_id(b)


async def xrange_raw(
    client: RedisClient, stream: str, start: str = "-", count: int | None = None
) -> list[RawEntry]:
    """Entries as Redis holds them (repeated field names kept, see _parse_read)."""
    client.set_response_callback("XRANGE", _parse_range)  # idempotent, per client
    return cast(list[RawEntry], await client.xrange(stream, min=start, count=count))


async def xread_raw(
    client: RedisClient,
    cursors: Mapping[str, str],
    block_ms: int | None,
    count: int | None = None,
) -> StreamReply:
    """XREAD, entries as Redis holds them (see _parse_read)."""
    client.set_response_callback("XREAD", _parse_read)  # idempotent, per client
    if isinstance(client, RedisCluster):
        return await _routed(client, "XREAD", [], cursors, count, block_ms)
    reply = await client.xread(dict(cursors), count=count, block=block_ms)  # type: ignore[arg-type]
    return cast(StreamReply, reply or [])


async def _routed(
    client: RedisCluster,
    command: str,
    head: list[str],
    cursors: Mapping[str, str],
    count: int | None,
    block_ms: int | None,
) -> StreamReply:
    """A stream read sent to the master of its streams' slot. redis-py cannot find the
    keys of XREAD and XREADGROUP (movable keys) by itself and would ask a node COMMAND
    GETKEYS before every read: a second round trip, all to one node, which doubled the
    time a job took to come back on a cluster."""
    pieces: list[str | int] = [*head]
    if count is not None:
        pieces += ["COUNT", count]
    if block_ms is not None:
        pieces += ["BLOCK", block_ms]
    pieces += ["STREAMS", *cursors, *cursors.values()]
    node = client.get_node_from_key(next(iter(cursors)))
    reply = await client.execute_command(command, *pieces, target_nodes=node)
    return cast(StreamReply, reply or [])


def _fields(flat: list[bytes] | None) -> dict[bytes, bytes]:
    if flat is None:  # a pending entry trimmed from the stream
        return {}
    pairs = list(zip(flat[::2], flat[1::2], strict=True))
    fields = dict(pairs)
    return fields if len(fields) == len(pairs) else RepeatedFields(pairs)


def entries_of(response: Any) -> list[RawEntry]:
    """XRANGE's raw reply (also from a script) as entries, repeated field names kept."""
    return [(entry_id, _fields(flat)) for entry_id, flat in response or []]


def _parse_range(response: Any, **options: Any) -> list[RawEntry]:
    return entries_of(response)


def _parse_read(response: Any, **options: Any) -> StreamReply:
    """XREADGROUP's reply as redis-py gives it, but an entry whose field names repeat
    keeps every pair (redis-py's dict keeps the last value only), so it can be
    dead-lettered as it is rather than applied as the last copy says."""
    if response is None:
        return []
    found = response.items() if isinstance(response, dict) else response
    return [(name, _parse_range(entries)) for name, entries in found]


async def xreadgroup_raw(
    client: RedisClient,
    group: str,
    consumer: str,
    cursors: Mapping[str, str],
    count: int,
    block_ms: int | None,
) -> StreamReply:
    client.set_response_callback("XREADGROUP", _parse_read)  # idempotent, per client
    if isinstance(client, RedisCluster):
        head = ["GROUP", group, consumer]
        return await _routed(client, "XREADGROUP", head, cursors, count, block_ms)
    reply = await client.xreadgroup(
        group,
        consumer,
        dict(cursors),  # type: ignore[arg-type]
        count=count,
        block=block_ms,
    )
    return cast(StreamReply, reply or [])


async def read_stream(
    client: RedisClient, stream: str, start: str = "-"
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Every entry of a stream from ``start``, a page at a time, as text."""
    cursor = start
    while True:
        page = await xrange_raw(client, stream, cursor, _PAGE)
        for entry_id, fields in page:
            yield text(entry_id), {text(k): text(v) for k, v in fields.items()}
        if len(page) < _PAGE:
            return
        cursor = "(" + text(page[-1][0])


async def read_hash(client: RedisClient, key: str) -> dict[str, str]:
    raw = cast(dict[bytes, bytes], await client.hgetall(key))
    return {text(k): text(v) for k, v in raw.items()}
