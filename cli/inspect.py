"""Commands that look at a cell: streams, nodes, pools, sessions, jobs, the log."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import anyio
import typer
from rich.console import Console
from rich.table import Table

from eventsched import inspect
from eventsched.events import NodeDraining
from eventsched.keys import DEFAULT_CELL, DEFAULT_NAMESPACE, CellKeys
from eventsched.log import append
from eventsched.store import RedisClient, Store
from eventsched.streams import read_stream, text, xread_raw

__all__ = ["register"]

T = TypeVar("T")

RedisUrl = Annotated[
    str,
    typer.Option("--redis-url", envvar="EVENTSCHED_REDIS_URL", help="redis://host:port/db"),
]
Cell = Annotated[str, typer.Option(help="the cell")]
Namespace = Annotated[str, typer.Option(help="key namespace in front of each cell's tag")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON (schema: docs/CLI.md)")]
Limit = Annotated[int, typer.Option(min=1, help="at most this many rows")]
DEFAULT_URL = "redis://127.0.0.1:6379"

node_app = typer.Typer(help="One node: show, drain.", no_args_is_help=True)
pools_app = typer.Typer(help="Pools: list, apply a configuration.", invoke_without_command=True)
session_app = typer.Typer(help="One session.", no_args_is_help=True)
job_app = typer.Typer(help="One job.", no_args_is_help=True)


class NotFound(ValueError):
    """Something asked for by id does not exist (exit 1, one line)."""


def _run(
    url: str, cell: str, namespace: str, work: Callable[[RedisClient, CellKeys], Awaitable[T]]
) -> T:
    keys = CellKeys(cell, namespace)

    async def main() -> T:
        client = Store(url).client()
        try:
            if not await client.exists(keys.log):
                raise NotFound(f"unknown cell {namespace}:{{{cell}}} (it has no log)")
            return await work(client, keys)
        finally:
            await client.aclose()

    return anyio.run(main)


def _emit(rows: Any, as_json: bool, title: str, columns: list[str]) -> None:
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, sort_keys=True))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    Console().print(table)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _show(found: dict[str, Any] | None, what: str, as_json: bool) -> None:
    if found is None:
        raise NotFound(f"no {what}")
    if as_json:
        print(json.dumps(found, ensure_ascii=False, sort_keys=True))
    else:
        Console().print_json(json.dumps(found, ensure_ascii=False, default=str))


def streams(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: AsJson = False,
) -> None:
    """Every stream of the cell: length, first and last IDs, groups, pending, lag."""
    rows = _run(redis_url, cell, namespace, inspect.list_streams)
    if as_json:
        _emit(rows, True, "", [])
        return
    flat = [
        {
            **row,
            "groups": [
                f"{g['name']}: {g['pending']} pending, lag {g['lag']}" for g in row["groups"]
            ],
        }
        for row in rows
    ]
    _emit(flat, False, "streams", ["stream", "length", "first_id", "last_id", "groups"])


def nodes(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    limit: Limit = 1000,
    as_json: AsJson = False,
) -> None:
    """Nodes: state, running/max, load, heartbeat age (event time), pools, pairs."""
    rows = _run(redis_url, cell, namespace, lambda c, k: inspect.list_nodes(c, k, limit))
    columns = [
        "node_id",
        "state",
        "running",
        "max_concurrency",
        "cpu_pct",
        "gpu_pct",
        "mem_pct",
        "heartbeat_age_ms",
        "pools",
    ]
    _emit(rows, as_json, "nodes", columns)


@node_app.command("show")
def node_show(
    node_id: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: AsJson = False,
) -> None:
    """One node with its running jobs."""
    found = _run(redis_url, cell, namespace, lambda c, k: inspect.node_detail(c, k, node_id))
    _show(found, f"node {node_id}", as_json)


@node_app.command("drain")
def node_drain(
    node_id: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """Append a drain event: the node gets no new jobs and finishes its running ones."""

    async def work(client: RedisClient, keys: CellKeys) -> str:
        if await inspect.node_detail(client, keys, node_id) is None:
            raise NotFound(f"no node {node_id}")
        return await append(client, keys, NodeDraining(node_id=node_id))

    print(f"drain of {node_id} appended as log entry {_run(redis_url, cell, namespace, work)}")


@pools_app.callback()
def pools(
    context: typer.Context,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: AsJson = False,
) -> None:
    """Pools with languages, members, free slots and utilization."""
    if context.invoked_subcommand is not None:
        return
    found = _run(redis_url, cell, namespace, inspect.list_pools)
    if as_json:
        _emit(found, True, "", [])
        return
    title = f"pools ({found['mode']})"
    _emit(
        found["pools"],
        False,
        title,
        ["pool", "order", "languages", "members", "free_slots", "utilization"],
    )


@pools_app.command("apply")
def pools_apply(
    path: Path,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """Validate a TOML pool configuration and append it; a bad file appends nothing."""
    if not path.is_file():
        raise NotFound(f"no such file: {path}")
    configured = inspect.load_pools_file(str(path), path.read_text(encoding="utf-8"))

    async def work(client: RedisClient, keys: CellKeys) -> str:
        return await append(client, keys, configured)

    entry = _run(redis_url, cell, namespace, work)
    print(f"{len(configured.pools)} pools appended as log entry {entry}")


def sessions(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    limit: Limit = 1000,
    as_json: AsJson = False,
) -> None:
    """Sessions: pair, bound pool, finalized, delivered, in flight."""
    rows = _run(redis_url, cell, namespace, lambda c, k: inspect.list_sessions(c, k, limit))
    columns = [
        "session_id",
        "src_lang",
        "tgt_lang",
        "pool",
        "closed",
        "finalized",
        "delivered",
        "in_flight",
    ]
    _emit(rows, as_json, "sessions", columns)


@session_app.command("show")
def session_show(
    session_id: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: AsJson = False,
) -> None:
    """One session: its pool and pair, pending results, group, recent outputs."""
    found = _run(redis_url, cell, namespace, lambda c, k: inspect.session_detail(c, k, session_id))
    _show(found, f"session {session_id}", as_json)


def jobs(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    state: Annotated[str | None, typer.Option(help="running, done or failed")] = None,
    limit: Limit = 1000,
    as_json: AsJson = False,
) -> None:
    """Jobs: state, attempt, node, pool, deadline."""
    if state not in (None, "running", "done", "failed"):
        raise typer.BadParameter("state must be running, done or failed", param_hint="--state")
    rows = _run(redis_url, cell, namespace, lambda c, k: inspect.list_jobs(c, k, state, limit))
    _emit(rows, as_json, "jobs", ["job_id", "state", "attempt", "node_id", "pool", "deadline_ms"])


@job_app.command("show")
def job_show(
    job_id: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: AsJson = False,
) -> None:
    """One job and its lineage: every attempt, node and reason."""
    found = _run(redis_url, cell, namespace, lambda c, k: inspect.job_detail(c, k, job_id))
    _show(found, f"job {job_id}", as_json)


def tail(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events")
    ] = False,
    event_type: Annotated[str | None, typer.Option("--type", help="only this event type")] = None,
    count: Annotated[int, typer.Option(min=1, help="events shown before following")] = 20,
) -> None:
    """The log decoded, one line (JSON) per event: the newest COUNT, then new ones."""

    def show(entry: dict[str, Any]) -> None:
        if event_type is None or entry["type"] == event_type:
            print(json.dumps(entry, ensure_ascii=False, sort_keys=True), flush=True)

    async def work(client: RedisClient, keys: CellKeys) -> None:
        newest = cast(list[tuple[bytes, Any]], await client.xrevrange(keys.log, count=count))
        cursor = text(newest[0][0]) if newest else "0-0"
        oldest_shown = text(newest[-1][0]) if newest else "0-0"
        async for entry_id, fields in read_stream(client, keys.log, oldest_shown):
            show(inspect.describe_event(entry_id, fields))
        while follow:
            for _, entries in await xread_raw(client, {keys.log: cursor}, 1000):
                for raw_id, raw in entries:
                    cursor = text(raw_id)
                    fields = {text(k): text(v) for k, v in raw.items()}
                    show(inspect.describe_event(cursor, fields))

    _run(redis_url, cell, namespace, work)


def register(app: typer.Typer) -> None:
    for command in (streams, nodes, sessions, jobs, tail):
        app.command()(command)
    app.add_typer(node_app, name="node")
    app.add_typer(pools_app, name="pools")
    app.add_typer(session_app, name="session")
    app.add_typer(job_app, name="job")
