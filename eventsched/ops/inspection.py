"""What the operator's CLI shows: the cell's streams, nodes, pools, sessions and jobs,
as plain dicts with a stable shape (docs/CLI.md), read from the projections.

These read on request; they are for looking, not for the dispatch path. Listings scan
the cell's keys of one kind and are capped by ``limit``.
"""

from __future__ import annotations

import tomllib
from typing import Any, cast

from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from eventsched.model.events import SOURCE_FIELD, PoolsConfigured
from eventsched.model.keys import SUFFIXES, CellKeys
from eventsched.model.principals import lawful_event
from eventsched.projections.directory import find_cells, read_directory
from eventsched.projections.groups import SessionView, read_outcomes, read_session
from eventsched.projections.snapshot import NodeView, applied_ms, read_node, read_snapshot
from eventsched.store.client import RedisClient
from eventsched.store.streams import read_hash, read_stream, text

__all__ = [
    "JOB_STATES",
    "PoolFileError",
    "describe_event",
    "job_detail",
    "list_cells",
    "list_jobs",
    "list_nodes",
    "list_pools",
    "list_sessions",
    "list_streams",
    "load_pools_file",
    "node_detail",
    "node_page",
    "session_detail",
]


async def _ids_of(client: RedisClient, keys: CellKeys, suffix: str, limit: int) -> list[str]:
    prefix = keys.prefix + SUFFIXES[suffix]
    found: list[str] = []
    async for raw in client.scan_iter(match=prefix + "*", count=1000):
        found.append(text(raw)[len(prefix) :])
    return sorted(found)[:limit]


async def _now_ms(client: RedisClient, keys: CellKeys) -> int:
    return await applied_ms(client, keys) or 0


async def list_cells(client: RedisClient, namespace: str) -> list[dict[str, Any]]:
    """Every cell of the namespace with its hash slot, on a Redis Cluster the master
    serving that slot (``host:port``; None on one Redis), and what its directory entry
    offers (``listed`` false and the rest None for a cell with a log that is not listed
    yet; ``offered_ms`` None until a worker wrote its first offer)."""
    offers = await read_directory(client, namespace)
    rows = []
    for keys in await find_cells(client, namespace):
        master = None
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(keys.log)
            master = f"{node.host}:{node.port}"
        offer = offers.get(keys.cell)
        rows.append(
            {
                "cell": keys.cell,
                "slot": key_slot(keys.log.encode()),
                "master": master,
                "listed": offer is not None,
                "nodes": offer.nodes if offer else None,
                "sessions": offer.sessions if offer else None,
                "free_slots": offer.free_slots if offer else None,
                "offered_ms": offer.at_ms or None if offer else None,
            }
        )
    return rows


async def list_streams(
    client: RedisClient, keys: CellKeys, limit: int = 1000
) -> list[dict[str, Any]]:
    names = [keys.log, keys.decisions, keys.dlq]
    for suffix in ("inbox", "output"):
        names += [
            keys.prefix + SUFFIXES[suffix] + i for i in await _ids_of(client, keys, suffix, limit)
        ]
    rows = []
    for name in names:
        if not await client.exists(name):
            continue
        info = await client.xinfo_stream(name)
        groups = []
        for group in await client.xinfo_groups(name):
            lag = group.get("lag")
            groups.append(
                {
                    "name": text(group["name"]),
                    "consumers": int(group["consumers"]),
                    "pending": int(group["pending"]),
                    "last_delivered": text(group["last-delivered-id"]),
                    "lag": None if lag is None else int(lag),
                }
            )
        first, last = info.get("first-entry"), info.get("last-entry")
        rows.append(
            {
                "stream": name[len(keys.prefix) :],
                "length": int(info["length"]),
                "first_id": text(first[0]) if first else None,
                "last_id": text(last[0]) if last else None,
                "groups": groups,
            }
        )
    return rows


def _node_state(node: NodeView) -> str:
    if node.state == "up":
        return "ready" if node.in_pools else "overloaded"
    return {"drain": "draining", "gone": "deregistered"}.get(node.state, node.state)


def _node_row(node: NodeView, now_ms: int) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "state": _node_state(node),
        "running": node.running,
        "max_concurrency": node.max_concurrency,
        "cpu_pct": node.cpu_pct,
        "gpu_pct": node.gpu_pct,
        "mem_pct": node.mem_pct,
        "heartbeat_age_ms": max(0, now_ms - node.heartbeat_ms),
        "pools": list(node.pools),
        "pairs": list(node.pairs),
        "gpu": node.gpu,
    }


async def node_page(
    client: RedisClient, keys: CellKeys, after: str | None = None, limit: int = 1000
) -> tuple[list[dict[str, Any]], str | None]:
    """Nodes in id order after ``after`` (from the nodes index: the page's nodes are all
    that is read), and the id to ask for the next page after (None at the end)."""
    low = f"({after}" if after else "-"
    ids = [text(i) for i in await client.zrangebylex(keys.nodes, low, "+", 0, limit + 1)]
    now_ms = await _now_ms(client, keys)
    rows = []
    for node_id in ids[:limit]:
        node = await read_node(client, keys, node_id)
        if node is not None:
            rows.append(_node_row(node, now_ms))
    return rows, ids[limit - 1] if len(ids) > limit else None


async def list_nodes(
    client: RedisClient, keys: CellKeys, limit: int = 1000
) -> list[dict[str, Any]]:
    rows, _ = await node_page(client, keys, None, limit)
    return rows


async def node_detail(client: RedisClient, keys: CellKeys, node_id: str) -> dict[str, Any] | None:
    node = await read_node(client, keys, node_id)
    if node is None:
        return None
    row = _node_row(node, await _now_ms(client, keys))
    jobs = cast(set[bytes], await client.smembers(keys.node_jobs(node_id)))
    row["running_jobs"] = sorted(text(j) for j in jobs)
    row["inbox_length"] = int(await client.xlen(keys.inbox(node_id)))
    return row


async def list_pools(client: RedisClient, keys: CellKeys) -> dict[str, Any]:
    snapshot = await read_snapshot(client, keys, members_per_pool=100_000)
    pools = []
    for pool in snapshot.pools:
        running = capacity = 0
        for member, _ in pool.members:
            node = await read_node(client, keys, member)
            if node is not None:
                running += node.running
                capacity += node.max_concurrency
        pools.append(
            {
                "pool": pool.name,
                "order": pool.order,
                "languages": list(pool.languages),
                "members": len(pool.members),
                "free_slots": capacity - running,
                "utilization": round(running / capacity, 3) if capacity else 0.0,
            }
        )
    index = {pair: list(found) for pair, found in snapshot.lang_index.items()}
    return {"mode": snapshot.mode, "pools": pools, "lang_index": index}


def _session_row(session_id: str, view: SessionView, delivered: int) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "src_lang": view.src_lang,
        "tgt_lang": view.tgt_lang,
        "pool": view.preferred_pool,
        "closed": view.closed,
        "finalized": delivered + len(view.in_flight),
        "delivered": delivered,
        "in_flight": len(view.in_flight),
    }


async def list_sessions(
    client: RedisClient, keys: CellKeys, limit: int = 1000
) -> list[dict[str, Any]]:
    rows = []
    for session_id in await _ids_of(client, keys, "session", limit):
        view = await read_session(client, keys, session_id)
        if view is not None:
            delivered = int(await client.xlen(keys.output(session_id)))
            rows.append(_session_row(session_id, view, delivered))
    return rows


async def session_detail(
    client: RedisClient, keys: CellKeys, session_id: str, recent: int = 10
) -> dict[str, Any] | None:
    view = await read_session(client, keys, session_id)
    if view is None:
        return None
    outcomes = await read_outcomes(client, keys, session_id)
    row = _session_row(session_id, view, len(outcomes))
    row["pending_results"] = list(view.in_flight)
    row["tts_playing_until_ms"] = view.tts_playing_until_ms
    row["group"] = None if view.group is None else vars(view.group)
    row["recent_outputs"] = [o.model_dump(mode="json") for o in outcomes[-recent:]]
    return row


_JOB_STATES = {"wait": "waiting", "run": "running", "done": "done", "failed": "failed"}
JOB_STATES = tuple(_JOB_STATES.values())


async def _job_row(client: RedisClient, keys: CellKeys, job_id: str) -> dict[str, Any] | None:
    job = await read_hash(client, keys.job(job_id))
    if not job:
        return None
    return {
        "job_id": job_id,
        "state": _JOB_STATES.get(job.get("st", ""), job.get("st", "")),
        "attempt": int(job.get("att", 0)),
        "node_id": job.get("node", ""),
        "pool": job.get("pool", ""),
        "deadline_ms": int(job.get("dl", 0)),
        # waiting for a slot (queue.lua): since when, and once placed how long it waited
        "waiting_since_ms": int(job["qat"]) if job.get("st") == "wait" else None,
        "waited_ms": int(job["waited"]) if "waited" in job else None,
    }


async def list_jobs(
    client: RedisClient, keys: CellKeys, state: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    rows = []
    for job_id in await _ids_of(client, keys, "job", 100_000):
        row = await _job_row(client, keys, job_id)
        if row is not None and (state is None or row["state"] == state):
            rows.append(row)
            if len(rows) >= limit:
                break
    return rows


async def job_detail(client: RedisClient, keys: CellKeys, job_id: str) -> dict[str, Any] | None:
    """A job and its whole lineage from the decisions stream: attempts, nodes, reasons."""
    row = await _job_row(client, keys, job_id)
    if row is None:
        return None
    lineage = []
    async for decision_id, fields in read_stream(client, keys.decisions):
        if fields.get("job") == job_id:
            lineage.append({"decision_id": decision_id, **fields})
    return {**row, "lineage": lineage}


def describe_event(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """One log entry decoded for `eventsched tail`."""
    event = lawful_event(fields)
    if event is None:  # dead-lettered when applied (dlq show says why)
        return {"id": entry_id, "type": "invalid", "fields": fields}
    by = {SOURCE_FIELD: fields[SOURCE_FIELD]} if SOURCE_FIELD in fields else {}
    return {"id": entry_id, **by, **event.model_dump(mode="json")}


class PoolFileError(ValueError):
    """A pool file that cannot be used; the message names the line."""


def load_pools_file(name: str, content: str) -> PoolsConfigured:
    """A pool configuration in TOML (``[[pools]]`` tables with name, languages, order),
    validated; errors name the line."""
    try:
        data = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise PoolFileError(f"{name}: {exc}") from None
    try:
        return PoolsConfigured.model_validate({"type": "pools_configured", **data}, strict=False)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = list(first["loc"])
        line = _line_of_pool(content, where[1]) if len(where) > 1 and where[0] == "pools" else 1
        field = ".".join(str(part) for part in where) or "pools"
        raise PoolFileError(f"{name}:{line}: {field}: {first['msg']}") from None


def _line_of_pool(content: str, index: object) -> int:
    """The line of the index-th ``[[pools]]`` table."""
    seen = -1
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip() == "[[pools]]":
            seen += 1
            if seen == index:
                return number
    return 1
