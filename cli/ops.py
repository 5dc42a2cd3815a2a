"""Commands that check and repair a cell: verify, rebuild, and the dead letters."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from eventsched.model.keys import DEFAULT_CELL, DEFAULT_NAMESPACE, CellKeys
from eventsched.ops import dead_letters
from eventsched.ops.rebuild import rebuild_groups
from eventsched.ops.verify import VerifyReport, verify_cell
from eventsched.store.client import RedisClient

from .common import (
    DEFAULT_URL,
    AsJson,
    Cell,
    Namespace,
    RedisUrl,
    command_group,
    print_table,
    run_on_cell,
)

__all__ = ["register"]

dlq_app = command_group(help="The cell's dead-letter stream.", no_args_is_help=True)


def verify(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: AsJson = False,
) -> None:
    """Rebuild every projection from the log in memory, compare it with the live one and
    check the invariants. Exit 0 when all hold, 1 with a report otherwise."""
    report: VerifyReport = run_on_cell(redis_url, cell, namespace, verify_cell)
    if as_json:
        print(
            json.dumps(
                {"ok": report.ok, "problems": report.problems, **report.figures}, sort_keys=True
            )
        )
    else:
        console = Console()
        verdict = "[green]ok[/green]" if report.ok else "[red]FAILED[/red]"
        console.print(f"verify {namespace}:{{{cell}}}: {report.log_entries} log entries, {verdict}")
        for name, value in report.figures.items():
            console.print(f"  {name}: {value}")
        for problem in report.problems:
            console.print(f"  [red]problem[/red]: {problem}")
    raise typer.Exit(0 if report.ok else 1)


def rebuild(
    projection: Annotated[str, typer.Option(help="the projection to rebuild: groups")],
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """Rebuild a projection from its input stream, without touching the others."""
    if projection != "groups":
        raise ValueError("only the groups projection can be rebuilt (dispatch hands off jobs)")

    async def work(client: RedisClient, keys: CellKeys) -> int:
        return await rebuild_groups(client, keys)

    folded = run_on_cell(redis_url, cell, namespace, work)
    print(f"rebuilt groups of {namespace}:{{{cell}}} from {folded} decisions")


@dlq_app.command("list")
def dlq_list(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_json: AsJson = False,
) -> None:
    """The oldest dead letters: id, reason, log position."""

    async def work(client: RedisClient, keys: CellKeys) -> list[dead_letters.DeadLetter]:
        return await dead_letters.list_dead(client, keys, limit)

    found = run_on_cell(redis_url, cell, namespace, work)
    if as_json:
        print(json.dumps([letter.__dict__ for letter in found], sort_keys=True))
        return
    rows = [[letter.dlq_id, letter.log_id, letter.reason] for letter in found]
    print_table(f"dead letters of {namespace}:{{{cell}}}", ["dlq_id", "log_id", "reason"], rows)


@dlq_app.command("show")
def dlq_show(
    dlq_id: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """One dead letter with its original fields, as JSON."""

    async def work(client: RedisClient, keys: CellKeys) -> dead_letters.DeadLetter | None:
        return await dead_letters.find(client, keys, dlq_id)

    letter = run_on_cell(redis_url, cell, namespace, work)
    if letter is None:
        raise ValueError(f"no dead letter {dlq_id}")
    print(json.dumps(letter.__dict__, indent=2, ensure_ascii=False, sort_keys=True))


@dlq_app.command("requeue")
def dlq_requeue(
    dlq_id: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """Append a dead letter's original fields to the log again, byte for byte; the letter
    stays in the stream (a rebuild makes it again), noted as requeued."""

    async def work(client: RedisClient, keys: CellKeys) -> str:
        return await dead_letters.requeue(client, keys, dlq_id)

    print(f"requeued {dlq_id} as log entry {run_on_cell(redis_url, cell, namespace, work)}")


def register(app: typer.Typer) -> None:
    app.command()(verify)
    app.command()(rebuild)
    app.add_typer(dlq_app, name="dlq")
