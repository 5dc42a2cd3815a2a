"""Trimming without losing anything, and the checkpoints that make it safe.

A stream is trimmed only below the point every consumer group has acknowledged. The
log and the decisions stream are trimmed, beyond the retention window, only below a
checkpoint: the cell's projections (without stream history) stored at a log position,
so a recording can still start after the trimmed part (``replay.record --since``).
Node inboxes are trimmed below what their node acknowledged, a slice of the nodes per
round. (Job records and idle sessions end in event time, in apply.lua; a session's
output stream keeps its last ``OUTPUT_MAX_LEN`` entries, in groups.lua.)
"""

from __future__ import annotations

import json
from typing import Any, cast

from redis.exceptions import ResponseError

from eventsched.model.events import canonical_json
from eventsched.model.keys import CellKeys
from eventsched.projections.cell_state import dump_state, restore_items
from eventsched.store.client import RedisClient
from eventsched.store.streams import last_id, next_id, parse_id, text

__all__ = [
    "acked_bound",
    "checkpoint_markers",
    "deleted_below",
    "load_checkpoint",
    "retain",
    "trim_acknowledged",
    "trim_inboxes",
    "write_checkpoint",
]


async def acked_bound(client: RedisClient, stream: str) -> str | None:
    """The lowest ID some group still needs: every entry below it is acknowledged by
    every group. None when the stream has no group (nothing may be trimmed then)."""
    groups = await client.xinfo_groups(stream)
    if not groups:
        return None
    bounds = []
    for group in groups:
        name = text(group["name"])
        summary = await client.xpending(stream, name)
        if summary["pending"]:
            bounds.append(text(summary["min"]))  # the oldest entry read but not acked
        else:
            bounds.append(next_id(text(group["last-delivered-id"])))
    return min(bounds, key=parse_id)


async def trim_acknowledged(client: RedisClient, stream: str, below: str | None = None) -> int:
    """Remove the entries that every group has acknowledged (only those below ``below``,
    when given); returns how many were removed."""
    bound = await acked_bound(client, stream)
    if bound is None:
        return 0
    minimum = bound if below is None else min(bound, below, key=parse_id)
    return int(await client.xtrim(stream, minid=minimum, approximate=False))


async def trim_inboxes(
    client: RedisClient, keys: CellKeys, start: int, count: int
) -> tuple[int, int]:
    """Trim the inboxes of ``count`` nodes from position ``start`` of the node list below
    what each node acknowledged. Returns entries removed and where the next round starts
    (0 after the last node)."""
    found = cast(list[bytes], await client.zrange(keys.nodes, start, start + count))  # +1: more?
    node_ids = [text(n) for n in found[:count]]
    removed = 0
    for node_id in node_ids:
        try:
            removed += await trim_acknowledged(client, keys.inbox(node_id))
        except ResponseError:  # no inbox (not yet made, or lost with a flush)
            continue
    return removed, (start + count if len(found) > count else 0)


async def deleted_below(client: RedisClient, keys: CellKeys, stream: str) -> str | None:
    """An ID below which entries of the stream may have been deleted (none at or after
    it were), or None when nothing was ever deleted. Redis counts what was added but
    does not say where XTRIM cut, so retention records its own cuts."""
    if not await client.exists(stream):
        return None
    info = await client.xinfo_stream(stream)
    added = info.get("entries-added")
    if added is None or int(added) == int(info["length"]):
        return None
    bounds = []
    max_deleted = text(info.get("max-deleted-entry-id") or b"0-0")
    if max_deleted != "0-0":
        bounds.append(next_id(max_deleted))  # XDEL
    recorded = await client.hget(keys.trims, stream)
    if recorded is not None:
        bounds.append(text(recorded))  # our own XTRIM
    if not bounds:  # trimmed by someone else: assume everything before what is left
        first = info.get("first-entry")
        bounds.append(text(first[0]) if first else next_id(text(info["last-generated-id"])))
    return max(bounds, key=parse_id)


async def write_checkpoint(client: RedisClient, keys: CellKeys) -> str | None:
    """Store the projections at the cell's current applied position; returns that
    position, or None while the groups projection lags (try again later)."""
    state = await dump_state(client, keys, with_streams=False)
    if state is None or state["_applied"] == "0-0":
        return None  # the groups projection lags, or nothing applied yet
    marker = str(state["_applied"])
    await client.hset(keys.checkpoints, marker, canonical_json(restore_items(state)))
    return marker


async def checkpoint_markers(client: RedisClient, keys: CellKeys) -> list[str]:
    found = cast(list[bytes], await client.hkeys(keys.checkpoints))
    return sorted((text(m) for m in found), key=parse_id)


async def load_checkpoint(client: RedisClient, keys: CellKeys, marker: str) -> list[Any]:
    raw = await client.hget(keys.checkpoints, marker)
    if raw is None:
        raise ValueError(f"no checkpoint at {marker}")
    return cast(list[Any], json.loads(raw))


def _groups_marker(items: list[Any]) -> str:
    for item in items:
        if item["restore"] == "meta":
            return str(item["value"].get("groups_applied", "0-0"))
    return "0-0"


async def retain(client: RedisClient, keys: CellKeys, retain_ms: int) -> int:
    """One retention round: checkpoint when the newest is older than half the window,
    then trim the log and the decisions stream below the newest checkpoint older than
    the window (never below what a group still needs). Returns entries removed."""
    newest = await last_id(client, keys.log)
    if newest is None:
        return 0
    newest_ms, _ = parse_id(newest)
    markers = await checkpoint_markers(client, keys)
    if not markers or parse_id(markers[-1])[0] < newest_ms - retain_ms // 2:
        written = await write_checkpoint(client, keys)
        markers = await checkpoint_markers(client, keys) if written else markers
    window = (newest_ms - retain_ms, 0)
    older = [m for m in markers if parse_id(m) <= window]
    if not older:
        return 0
    base = older[-1]
    for stale in older[:-1]:
        await client.hdel(keys.checkpoints, stale)
    items = await load_checkpoint(client, keys, base)
    removed = 0
    for stream, below in (
        (keys.log, next_id(base)),
        (keys.decisions, next_id(_groups_marker(items))),
    ):
        trimmed = await trim_acknowledged(client, stream, below)
        if trimmed:
            await client.hset(keys.trims, stream, below)
            removed += trimmed
    return removed
