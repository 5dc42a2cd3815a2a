"""Reading the snapshot projection: nodes, pools, the language index, the marker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from eventsched.model.entries import node_pairs
from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient
from eventsched.store.streams import parse_id, read_hash, text

__all__ = ["NodeView", "PoolView", "Snapshot", "applied_ms", "read_node", "read_snapshot"]


@dataclass(frozen=True)
class NodeView:
    node_id: str
    state: str  # up | drain | gone
    max_concurrency: int
    running: int
    heartbeat_ms: int
    cpu_pct: int
    gpu_pct: int | None  # None: no GPU
    mem_pct: int
    pools: tuple[str, ...]
    pairs: tuple[str, ...]
    in_pools: bool  # up and not overloaded: offered work (freshness is checked per pick)
    gpu: str


@dataclass(frozen=True)
class PoolView:
    name: str
    order: int
    languages: tuple[str, ...]
    members: tuple[tuple[str, int], ...]  # (node id, load in permille), least loaded first


@dataclass(frozen=True)
class Snapshot:
    applied: str  # the tracking marker: last applied log ID
    mode: str  # auto | configured
    pools: tuple[PoolView, ...]
    lang_index: dict[str, tuple[str, ...]]
    node_count: int


def _node_view(node_id: str, raw: dict[str, str]) -> NodeView:
    return NodeView(
        node_id=node_id,
        state=raw["st"],
        max_concurrency=int(raw["mc"]),
        running=int(raw["run"]),
        heartbeat_ms=int(raw["hb"]),
        cpu_pct=int(raw["cpu"]),
        gpu_pct=int(raw["gpu"]) if raw["gpu"] else None,
        mem_pct=int(raw["mem"]),
        pools=tuple(p for p in raw.get("pools", "").split(",") if p),
        pairs=node_pairs(raw["pairs"]),
        in_pools=raw.get("inpool") == "1",
        gpu=raw.get("gpu_desc", ""),
    )


async def read_node(client: RedisClient, keys: CellKeys, node_id: str) -> NodeView | None:
    raw = await read_hash(client, keys.node(node_id))
    return _node_view(node_id, raw) if raw else None


async def read_snapshot(
    client: RedisClient, keys: CellKeys, members_per_pool: int = 20
) -> Snapshot:
    """The cell's snapshot; each pool lists its ``members_per_pool`` least-loaded members."""
    meta = await read_hash(client, keys.meta)
    pools = []
    for name, definition in sorted((await read_hash(client, keys.pools)).items()):
        order, _, languages = definition.partition("|")
        raw_members = cast(
            list[Any],
            await client.zrange(keys.pool(name), 0, members_per_pool - 1, withscores=True),
        )
        members = tuple((text(m), int(score)) for m, score in raw_members)
        pools.append(PoolView(name, int(order), tuple(languages.split(",")), members))
    index = {
        pair: tuple(listed.split(","))
        for pair, listed in sorted((await read_hash(client, keys.lang_index)).items())
    }
    return Snapshot(
        applied=meta.get("applied", "0-0"),
        mode=meta.get("mode", "auto"),
        pools=tuple(pools),
        lang_index=index,
        node_count=int(await client.zcard(keys.nodes)),
    )


async def applied_ms(client: RedisClient, keys: CellKeys) -> int | None:
    """The cell's event time: the ms of the last log entry the dispatch projection
    applied (its tracking marker); None before any."""
    applied = await client.hget(keys.meta, "applied")
    return None if applied is None else parse_id(text(applied))[0]
