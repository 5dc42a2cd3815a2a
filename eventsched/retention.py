"""Trimming a stream without losing anything: only entries every consumer group has
acknowledged, and only those older than the retention window (in event time)."""

from __future__ import annotations

from typing import Any, cast

from .store import RedisClient
from .streams import parse_id, text

__all__ = ["acked_bound", "trim_acknowledged"]


def _next(entry_id: str) -> str:
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}"


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
            bounds.append(_next(text(group["last-delivered-id"])))
    return min(bounds, key=parse_id)


async def trim_acknowledged(client: RedisClient, stream: str, retain_ms: int) -> int:
    """Remove entries acknowledged by every group and older than ``retain_ms`` before
    the stream's newest entry. Returns how many were removed."""
    bound = await acked_bound(client, stream)
    newest = cast(list[tuple[bytes, Any]], await client.xrevrange(stream, count=1))
    if bound is None or not newest:
        return 0
    newest_ms, _ = parse_id(text(newest[0][0]))
    window = f"{max(newest_ms - retain_ms, 0)}-0"
    minimum = min(bound, window, key=parse_id)
    return int(await client.xtrim(stream, minid=minimum, approximate=False))
