"""Replay fixtures and record live cells into fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import anyio
import typer

from eventsched.dispatch.worker import DEFAULT_BATCH
from eventsched.model.keys import DEFAULT_CELL, DEFAULT_NAMESPACE, CellKeys
from eventsched.ops.replay import (
    Fixture,
    ReplayResult,
    check,
    golden_path,
    load_fixture,
    record,
    replay,
)
from eventsched.store.client import MEMORY_URL, RedisClient

from .common import DEFAULT_URL, Cell, Namespace, RedisUrl, run_on_cell

__all__ = ["register"]


def _fixture_paths(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.glob("*.jsonl"))
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"no such fixture file or directory: {path}")
    if not found:
        raise ValueError("no fixtures (*.jsonl) found")
    return found


def replay_command(
    paths: Annotated[list[Path], typer.Argument(help="fixture files or directories")],
    check_goldens: Annotated[
        bool, typer.Option("--check", help="compare with the goldens; exit 1 on a mismatch")
    ] = False,
    update: Annotated[bool, typer.Option("--update", help="rewrite the goldens")] = False,
    redis_url: RedisUrl = MEMORY_URL,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="entries per apply")] = (
        DEFAULT_BATCH
    ),
    as_json: Annotated[bool, typer.Option("--json", help="a JSON summary as the last line")] = (
        False
    ),
) -> None:
    """Play fixtures back on a fresh namespace, byte for byte."""
    if check_goldens and update:
        raise ValueError("--check and --update exclude each other")
    fixtures = [(path, load_fixture(path)) for path in _fixture_paths(paths)]

    async def play(fixture: Fixture) -> ReplayResult:
        return await replay(fixture, redis_url, batch)

    failed: list[str] = []
    for path, fixture in fixtures:
        result = anyio.run(play, fixture)
        golden = golden_path(path)
        if update:
            golden.write_text(result.output, encoding="utf-8")
            print(f"{result.name}: {result.events} events, {result.output_lines} outputs, written")
        elif check_goldens:
            expected = golden.read_text(encoding="utf-8") if golden.exists() else None
            problem = check(result, expected)
            verdict = "ok" if problem is None else "DIFFERS" if expected is not None else problem
            print(
                f"{result.name}: {result.events} events, {result.output_lines} outputs, {verdict}"
            )
            if problem is not None:
                failed.append(result.name)
                if expected is not None:
                    print(problem)
        else:
            print(result.output, end="")
    if as_json:
        print(
            json.dumps(
                {"fixtures": len(fixtures), "failed": failed, "ok": not failed}, sort_keys=True
            )
        )
    raise typer.Exit(1 if failed else 0)


def record_command(
    out: Annotated[Path, typer.Option("--out", help="the fixture to write (.jsonl)")],
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    since: Annotated[
        str | None, typer.Option(help="start after this log ID (from a snapshot)")
    ] = None,
    until: Annotated[str | None, typer.Option(help="end at this log ID")] = None,
) -> None:
    """Write a live cell's log (up to what it applied) as a fixture, and its live output
    as the golden beside it."""
    if out.suffix != ".jsonl":
        raise ValueError("the fixture must be a .jsonl file")

    async def capture(client: RedisClient, keys: CellKeys) -> tuple[Fixture, str]:
        comments = [f"recorded from {namespace}:{{{cell}}} at {redis_url}"]
        return await record(client, keys, out.stem, comments, since, until)

    fixture, golden = run_on_cell(redis_url, cell, namespace, capture)
    out.write_text(fixture.to_text(), encoding="utf-8")
    golden_path(out).write_text(golden, encoding="utf-8")
    print(f"recorded {len(fixture.entries)} events into {out} and {golden_path(out)}")


def register(app: typer.Typer) -> None:
    app.command("replay")(replay_command)
    app.command("record")(record_command)
