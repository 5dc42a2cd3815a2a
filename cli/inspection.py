"""Commands that look at a cell: streams, nodes, pools, sessions, jobs, the log."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, cast

import anyio
import typer
from rich.console import Console

from eventsched.model.events import EVENT_TYPES, NodeDraining, NodeUndrained
from eventsched.model.keys import DEFAULT_CELL, DEFAULT_NAMESPACE, CellKeys
from eventsched.ops import inspection
from eventsched.projections.directory import find_cells, list_in_directory
from eventsched.store.append import append
from eventsched.store.client import RedisClient, Store
from eventsched.store.streams import read_stream, text, xread_raw

from .common import (
    DEFAULT_URL,
    AsJson,
    Cell,
    Namespace,
    NotFound,
    RedisUrl,
    cell_list,
    command_group,
    print_table,
    run_on_cell,
    run_with_client,
)

__all__ = ["register"]

Limit = Annotated[int, typer.Option(min=1, help="at most this many rows")]

node_app = command_group(help="One node: show, drain, undrain.", no_args_is_help=True)
pools_app = command_group(help="Pools: list, apply a configuration.", invoke_without_command=True)
session_app = command_group(help="One session.", no_args_is_help=True)
job_app = command_group(help="One job.", no_args_is_help=True)


AllCells = Annotated[
    bool, typer.Option("--all-cells", help="every cell of the namespace (adds a cell column)")
]


def _rows(
    url: str,
    cell: str,
    namespace: str,
    all_cells: bool,
    work: Callable[[RedisClient, CellKeys], Awaitable[list[dict[str, Any]]]],
) -> list[dict[str, Any]]:
    """A listing of one cell, or of every cell with a ``cell`` field first."""
    if not all_cells:
        return run_on_cell(url, cell, namespace, work)

    async def main() -> list[dict[str, Any]]:
        client = Store(url).client()
        try:
            rows: list[dict[str, Any]] = []
            for keys in await find_cells(client, namespace):
                rows += [{"cell": keys.cell, **row} for row in await work(client, keys)]
            return rows
        finally:
            await client.aclose()

    return anyio.run(main)


def _emit(rows: Any, as_json: bool, title: str, columns: list[str]) -> None:
    """Rows as JSON, or as a table headed by the same names (a ``cell`` column first
    for ``--all-cells``): identifiers are never cut, so what a row shows is what
    ``show`` takes; other columns fold when the terminal is narrow."""
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, sort_keys=True))
        return
    if rows and "cell" in rows[0] and "cell" not in columns:
        columns = ["cell", *columns]
    print_table(title, columns, [[_cell(row.get(column)) for column in columns] for row in rows])


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
        Console().print_json(json.dumps(found, ensure_ascii=False, default=str, sort_keys=True))


def cells(
    redis_url: RedisUrl = DEFAULT_URL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    add: Annotated[
        str,
        typer.Option(
            "--add",
            metavar="CELL,...",
            help="list these cells in the directory first (workers with --all-cells"
            " pick them up; gateways and nodes choose among listed cells)",
        ),
    ] = "",
    as_json: AsJson = False,
) -> None:
    """The namespace's cells: each one's hash slot, on a Redis Cluster its master, and
    what its directory entry offers (nodes, sessions, free slots)."""
    adding = cell_list(add, namespace)

    async def listed(client: RedisClient) -> list[dict[str, Any]]:
        await list_in_directory(client, adding)
        return await inspection.list_cells(client, namespace)

    rows = run_with_client(redis_url, listed)
    if not rows and not as_json:
        raise NotFound(f"no cells in namespace {namespace!r}")
    columns = ["cell", "slot", "master", "listed", "nodes", "sessions", "free_slots"]
    _emit(rows, as_json, f"cells of {namespace}", columns)


def streams(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    all_cells: AllCells = False,
    as_json: AsJson = False,
) -> None:
    """Every stream of the cell: length, first and last IDs, groups, pending, lag."""
    rows = _rows(redis_url, cell, namespace, all_cells, inspection.list_streams)
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
    all_cells: AllCells = False,
    as_json: AsJson = False,
) -> None:
    """Nodes: state, running/max, load, heartbeat age (event time), pools, pairs."""
    rows = _rows(
        redis_url, cell, namespace, all_cells, lambda c, k: inspection.list_nodes(c, k, limit)
    )
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
        "pairs",
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
    found = run_on_cell(
        redis_url, cell, namespace, lambda c, k: inspection.node_detail(c, k, node_id)
    )
    _show(found, f"node {node_id}", as_json)


def _to_node(url: str, cell: str, namespace: str, event: NodeDraining | NodeUndrained) -> str:
    """Append an operator's event about a known node; its log ID."""

    async def work(client: RedisClient, keys: CellKeys) -> str:
        if await inspection.node_detail(client, keys, event.node_id) is None:
            raise NotFound(f"no node {event.node_id}")
        return await append(client, keys, event)

    return run_on_cell(url, cell, namespace, work)


@node_app.command("drain")
def node_drain(
    node_id: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """Append a drain event: the node gets no new jobs and finishes its running ones."""
    entry_id = _to_node(redis_url, cell, namespace, NodeDraining(node_id=node_id))
    print(f"drain of {node_id} appended as log entry {entry_id}")


@node_app.command("undrain")
def node_undrain(
    node_id: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """Append an undrain event: a draining node is offered work again."""
    entry_id = _to_node(redis_url, cell, namespace, NodeUndrained(node_id=node_id))
    print(f"undrain of {node_id} appended as log entry {entry_id}")


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
    found = run_on_cell(redis_url, cell, namespace, inspection.list_pools)
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
    configured = inspection.load_pools_file(str(path), path.read_text(encoding="utf-8"))

    async def work(client: RedisClient, keys: CellKeys) -> str:
        return await append(client, keys, configured)

    entry = run_on_cell(redis_url, cell, namespace, work)
    print(f"{len(configured.pools)} pools appended as log entry {entry}")


def sessions(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    limit: Limit = 1000,
    all_cells: AllCells = False,
    as_json: AsJson = False,
) -> None:
    """Sessions: pair, bound pool, finalized, delivered, in flight."""
    rows = _rows(
        redis_url, cell, namespace, all_cells, lambda c, k: inspection.list_sessions(c, k, limit)
    )
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
    found = run_on_cell(
        redis_url, cell, namespace, lambda c, k: inspection.session_detail(c, k, session_id)
    )
    _show(found, f"session {session_id}", as_json)


def jobs(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    state: Annotated[
        str | None, typer.Option(help="waiting (for a slot), running, done or failed")
    ] = None,
    limit: Limit = 1000,
    all_cells: AllCells = False,
    as_json: AsJson = False,
) -> None:
    """Jobs: state, attempt, node, pool, deadline."""
    if state is not None and state not in inspection.JOB_STATES:
        raise typer.BadParameter(
            f"state must be one of {', '.join(inspection.JOB_STATES)}", param_hint="--state"
        )
    rows = _rows(
        redis_url, cell, namespace, all_cells, lambda c, k: inspection.list_jobs(c, k, state, limit)
    )
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
    found = run_on_cell(
        redis_url, cell, namespace, lambda c, k: inspection.job_detail(c, k, job_id)
    )
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
    if event_type is not None and event_type not in (*EVENT_TYPES, "invalid"):
        raise ValueError(f"unknown event type {event_type!r}: {', '.join(EVENT_TYPES)}, invalid")

    def show(entry: dict[str, Any]) -> None:
        if event_type is None or entry["type"] == event_type:
            print(json.dumps(entry, ensure_ascii=False, sort_keys=True), flush=True)

    async def work(client: RedisClient, keys: CellKeys) -> None:
        newest = cast(list[tuple[bytes, Any]], await client.xrevrange(keys.log, count=count))
        cursor = text(newest[0][0]) if newest else "0-0"
        oldest_shown = text(newest[-1][0]) if newest else "0-0"
        async for entry_id, fields in read_stream(client, keys.log, oldest_shown):
            show(inspection.describe_event(entry_id, fields))
        while follow:
            for _, entries in await xread_raw(client, {keys.log: cursor}, 1000):
                for raw_id, raw in entries:
                    cursor = text(raw_id)
                    fields = {text(k): text(v) for k, v in raw.items()}
                    show(inspection.describe_event(cursor, fields))

    run_on_cell(redis_url, cell, namespace, work)


def register(app: typer.Typer) -> None:
    for command in (cells, streams, nodes, sessions, jobs, tail):
        app.command()(command)
    app.add_typer(node_app, name="node")
    app.add_typer(pools_app, name="pools")
    app.add_typer(session_app, name="session")
    app.add_typer(job_app, name="job")
