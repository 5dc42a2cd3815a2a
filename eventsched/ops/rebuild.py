"""Rebuilding the group-state projection from the decisions stream, without touching
dispatch: the sessions' held outcomes, in-flight indexes, outputs and groups are
deleted and folded again from the first decision by the same script (groups.lua)."""

from __future__ import annotations

from eventsched.dispatch.applier import GROUPS_GROUP
from eventsched.dispatch.retention import deleted_below
from eventsched.dispatch.worker import Worker, ensure_group
from eventsched.model.keys import SUFFIXES, CellKeys
from eventsched.store.client import RedisClient, unlink_matching
from eventsched.store.streams import text

__all__ = ["GROUP_STATE_SUFFIXES", "rebuild_groups"]

GROUP_STATE_SUFFIXES = ("in_flight", "held", "output", "group")


async def rebuild_groups(
    client: RedisClient,
    keys: CellKeys,
    holder: str = "rebuild",
    lease_ms: int = 2000,
) -> int:
    """Rebuild; returns how many decisions were folded. The groups role's lease is taken
    for the rebuild, and only when no worker holds it (a worker whose group vanished
    under its read would stumble): a ValueError names the holder otherwise. Workers take
    the role back once this releases it."""
    if await deleted_below(client, keys, keys.decisions) is not None:
        raise ValueError(
            "the decisions stream was trimmed: the group state cannot be refolded from it"
        )
    worker = Worker(client, [keys], name=holder, lease_ms=lease_ms, projections=("groups",))
    if not await worker.roles[0].lease.keep():
        current = await client.get(keys.lease("groups"))
        raise ValueError(
            f"worker {text(current or b'?')} holds the groups role of {keys.cell}: stop it"
            " (or let its lease expire) and rebuild again"
        )
    try:
        for suffix in GROUP_STATE_SUFFIXES:
            await unlink_matching(client, f"{keys.prefix}{SUFFIXES[suffix]}*")
        await client.hdel(keys.meta, "groups_applied", "group_max")
        # A fresh group: pending entries of the old one must not be applied first.
        await ensure_group(client, keys.decisions, GROUPS_GROUP)
        await client.xgroup_destroy(keys.decisions, GROUPS_GROUP)
        await ensure_group(client, keys.decisions, GROUPS_GROUP)
        return await worker.drain()
    finally:
        await worker.release()
