"""Commands that run things: the worker, the load generator and the demo."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eventsched.dispatch.worker import (
    DEFAULT_BATCH,
    DEFAULT_RETAIN_S,
    Worker,
)
from eventsched.model.keys import DEFAULT_CELL, DEFAULT_NAMESPACE, CellKeys
from eventsched.model.settings import DEFAULTS
from eventsched.ops.audit import RunReport
from eventsched.ops.tuning import parse_assignments
from eventsched.projections.directory import find_cells
from eventsched.sim.demo import run_demo
from eventsched.sim.loadgen import LoadSpec, run_load
from eventsched.sim.loadgen import Progress as LoadProgress
from eventsched.store.client import MEMORY_URL, Store

from . import logs
from .common import DEFAULT_URL, Cell, Cells, Namespace, RedisUrl, cell_list

__all__ = ["register"]

Nodes = Annotated[int, typer.Option(min=1, max=100_000, help="simulated nodes")]
Sessions = Annotated[int, typer.Option(min=1, max=100_000, help="simulated sessions")]
Utterances = Annotated[int, typer.Option(min=1, max=100_000, help="utterances per session")]
Seed = Annotated[int, typer.Option(help="seed of the simulation's choices")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object as the last line")]


def _report(console: Console, report: RunReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), sort_keys=True))
        return
    table = Table(title="run summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in report.as_dict().items():
        table.add_row(name, str(value))
    console.print(table)


def _run_with_progress(
    spec: LoadSpec, as_json: bool, run: Callable[[LoadProgress], Awaitable[RunReport]]
) -> None:
    """Run a load with a progress bar on stderr, then print its report."""
    bar = Progress(
        TextColumn("outcomes delivered"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )

    async def main() -> RunReport:
        with bar:
            task = bar.add_task("load", total=spec.sessions * spec.utterances)
            return await run(lambda done, _total: bar.update(task, completed=done))

    _report(Console(), anyio.run(main), as_json)


# What a worker's --config file may set: its own options, by their names.
_WORKER_FILE_KEYS = (
    "redis_url",
    "cells",
    "all_cells",
    "namespace",
    "name",
    "batch",
    "lease_ms",
    "tick_ms",
    "retain",
    "verbose",
    "log_format",
)


def _read_config(context: typer.Context, path: Path | None) -> Path | None:
    """Load a TOML file as the command's defaults: a flag, then an environment variable,
    still wins over it (click consults the default map after both)."""
    if path is None:
        return None
    try:
        found = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(f"{path}: {exc}") from None
    table = found.get("worker", found)
    unknown = sorted(set(table) - set(_WORKER_FILE_KEYS))
    if unknown:
        raise typer.BadParameter(
            f"{path}: unknown key {unknown[0]!r}; known: {', '.join(_WORKER_FILE_KEYS)}"
        )
    context.default_map = {**(context.default_map or {}), **table}
    return path


def worker(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            is_eager=True,
            callback=_read_config,
            help="a TOML file of these options (flag > environment > file > default)",
        ),
    ] = None,
    redis_url: RedisUrl = DEFAULT_URL,
    cells: Cells = DEFAULT_CELL,
    all_cells: Annotated[
        bool,
        typer.Option(
            "--all-cells",
            help="every cell of the namespace, new ones included, its roles shared with the"
            " other --all-cells workers (about 1/N each)",
        ),
    ] = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    name: Annotated[str, typer.Option(help="consumer name (default: host-pid)")] = "",
    batch: Annotated[int, typer.Option(min=1, max=1000, help="finalizes' worth per call")] = (
        DEFAULT_BATCH
    ),
    lease_ms: Annotated[int, typer.Option(min=100, help="role lease time to live")] = 2000,
    tick_ms: Annotated[int, typer.Option(min=10, help="tick interval")] = 200,
    retain: Annotated[
        int,
        typer.Option(
            min=0,
            help="checkpoint, and trim acknowledged entries older than S s (0: keep"
            " everything); finished jobs and idle sessions expire by the cell's"
            " expire_after_ms setting",
        ),
    ] = DEFAULT_RETAIN_S,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v: roles taken and lost, -vv: more")
    ] = 0,
    log_format: Annotated[str, typer.Option(help="text, or json: one object per line")] = "text",
) -> None:
    """Work the cells' roles until SIGTERM or SIGINT: the batch in hand is finished and
    the leases are released; a second signal exits at once."""
    logs.configure(
        log_format, logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    )
    if redis_url.startswith(MEMORY_URL):
        raise ValueError("a worker serves other processes: give a redis:// URL")
    store = Store(redis_url)
    consumer = name or f"{socket.gethostname()}-{os.getpid()}"

    async def main() -> None:
        chosen = [] if all_cells else cell_list(cells, namespace)
        client = store.client()
        await client.ping()  # a wrong URL fails now, in one line, not in a silent retry
        stop = anyio.Event()
        runner = Worker(
            client,
            chosen,
            consumer,
            batch,
            lease_ms=lease_ms,
            tick_ms=tick_ms,
            retain_ms=retain * 1000 or None,
            all_cells_of=namespace if all_cells else None,
        )
        async with anyio.create_task_group() as group:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        if stop.is_set():
                            os._exit(128 + signum)  # the second signal: at once
                        stop.set()

            group.start_soon(on_signal)
            await runner.run(stop)
            group.cancel_scope.cancel()
        await client.aclose()

    anyio.run(main)


def loadgen(
    redis_url: RedisUrl = DEFAULT_URL,
    cells: Annotated[
        str,
        typer.Option(
            "--cells",
            "--cell",
            envvar="EVENTSCHED_CELL",
            help="the cell, or comma-separated cells to spread the load over",
        ),
    ] = DEFAULT_CELL,
    all_cells: Annotated[
        bool, typer.Option("--all-cells", help="over every cell of the namespace")
    ] = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    nodes: Nodes = 20,
    sessions: Sessions = 40,
    utterances: Utterances = 10,
    seed: Seed = 7,
    as_json: AsJson = False,
) -> None:
    """Simulate nodes and sessions against cells a worker is applying: over several,
    each language set's nodes in cells of their own, and each session in the cell the
    directory chooses for its pair."""
    if redis_url.startswith(MEMORY_URL):
        raise ValueError("loadgen needs a worker in another process: give a redis:// URL")
    spec = LoadSpec(nodes=nodes, sessions=sessions, utterances=utterances, seed=seed)

    async def load(progress: LoadProgress) -> RunReport:
        client = Store(redis_url).client()
        try:
            chosen = (
                await find_cells(client, namespace) if all_cells else cell_list(cells, namespace)
            )
            if not chosen:
                raise ValueError(f"no cells in namespace {namespace!r} (eventsched cells --add)")
            return await run_load(client, chosen, spec, progress)
        finally:
            await client.aclose()

    _run_with_progress(spec, as_json, load)


def demo(
    redis_url: RedisUrl = MEMORY_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    nodes: Nodes = 20,
    sessions: Sessions = 40,
    utterances: Utterances = 10,
    seed: Seed = 7,
    as_json: AsJson = False,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="a decision setting for the demo's cell (repeat; eventsched settings show"
            " lists them), e.g. --set queue_wait_ms=0",
        ),
    ] = None,
) -> None:
    """Run the load generator with an in-process worker (embedded fakeredis by default)."""
    spec = LoadSpec(nodes=nodes, sessions=sessions, utterances=utterances, seed=seed)
    settings = DEFAULTS.changed(parse_assignments(setting)) if setting else None

    async def load(progress: LoadProgress) -> RunReport:
        return await run_demo(redis_url, CellKeys(cell, namespace), spec, settings, progress)

    _run_with_progress(spec, as_json, load)


def register(app: typer.Typer) -> None:
    app.command()(worker)
    app.command()(loadgen)
    app.command()(demo)
