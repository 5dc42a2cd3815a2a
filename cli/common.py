"""What every command shares: the options naming a cell, and running work on it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.table import Table

from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient, Store

__all__ = [
    "DEFAULT_URL",
    "AsJson",
    "Cell",
    "Namespace",
    "NotFound",
    "RedisUrl",
    "cell_list",
    "run_on_cell",
    "run_with_client",
]

T = TypeVar("T")


def cell_list(cells: str, namespace: str) -> list[CellKeys]:
    """The cells of a comma-separated list (``--cells c0,c1``, ``cells --add``); a name
    that is no cell's is a one-line ValueError."""
    return [CellKeys(cell.strip(), namespace) for cell in cells.split(",") if cell.strip()]


DEFAULT_URL = "redis://127.0.0.1:6379"
# Every command finds its Redis, cell and namespace the same way: the flag, else the
# environment variable, else the default (docs/CLI.md).
RedisUrl = Annotated[
    str,
    typer.Option(
        "--redis-url",
        envvar="EVENTSCHED_REDIS_URL",
        help="redis://host:port/db, rediss://, unix:// or memory:// (docs/CLI.md)",
    ),
]
Cell = Annotated[str, typer.Option(envvar="EVENTSCHED_CELL", help="the cell")]
Cells = Annotated[str, typer.Option(envvar="EVENTSCHED_CELL", help="the cells, comma-separated")]
Namespace = Annotated[
    str,
    typer.Option(envvar="EVENTSCHED_NAMESPACE", help="key namespace in front of each cell's tag"),
]
AsJson = Annotated[bool, typer.Option("--json", help="JSON (schema: docs/CLI.md)")]


def command_group(**options: Any) -> typer.Typer:
    """A typer app (or sub-app) with plain click output: a usage error is one line after
    the usage, as README promises, and help shows no rich panels or ``<bool>`` metavars."""
    return typer.Typer(rich_markup_mode=None, **options)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for position, column in enumerate(columns):
        if _is_identifier(column):
            widest = max([len(column), *(len(row[position]) for row in rows)])
            table.add_column(column, no_wrap=True, min_width=widest)
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _is_identifier(column: str) -> bool:
    return column in ("cell", "stream") or column.endswith("_id")


class NotFound(ValueError):
    """Something asked for does not exist (exit 1, one line)."""


def run_with_client(url: str, work: Callable[[RedisClient], Awaitable[T]]) -> T:
    """Run ``work`` with a client of its own."""

    async def main() -> T:
        client = Store(url).client()
        try:
            return await work(client)
        finally:
            await client.aclose()

    return anyio.run(main)


def run_on_cell(
    url: str, cell: str, namespace: str, work: Callable[[RedisClient, CellKeys], Awaitable[T]]
) -> T:
    """Run ``work`` on an existing cell with a client of its own."""
    keys = CellKeys(cell, namespace)

    async def on_cell(client: RedisClient) -> T:
        if not await client.exists(keys.log):
            raise NotFound(f"unknown cell {namespace}:{{{cell}}} (it has no log)")
        return await work(client, keys)

    return run_with_client(url, on_cell)
