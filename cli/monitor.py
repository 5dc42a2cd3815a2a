"""``eventsched stats`` and ``top``: the statistics snapshot the dispatch worker publishes
every window, as tables or as a live frame that fits the terminal (80x24 at least)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from eventsched.model.keys import DEFAULT_CELL, DEFAULT_NAMESPACE, CellKeys
from eventsched.projections.stats import age_of, read_stats
from eventsched.store.client import Store

from .common import DEFAULT_URL, AsJson, Cell, Namespace, NotFound, RedisUrl, run_on_cell

__all__ = ["register"]

_FIGURES = (
    "dispatch_rate_per_s",
    "dispatch_p50_ms",
    "dispatch_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "wait_p50_ms",
    "wait_p99_ms",
)


def _value(value: Any) -> str:
    return "-" if value is None else str(value)


def _published(snapshot: dict[str, Any]) -> str:
    age_ms, stale = age_of(snapshot)
    said = f"window of {snapshot['window_ms']} ms from {snapshot['window_start_ms']}, published"
    return f"{said} {age_ms / 1000:.0f} s ago" + (" (STALE: no worker publishes)" if stale else "")


def _tables(snapshot: dict[str, Any]) -> list[Table]:
    window = Table(title=_published(snapshot))
    window.add_column("figure")
    window.add_column("value", justify="right")
    for name in _FIGURES:
        window.add_row(name, _value(snapshot.get(name)))
    for name, value in sorted(snapshot["counts"].items()):
        window.add_row(name, str(value))
    for group in ("rejected", "failed"):
        for reason, value in sorted(snapshot[group].items()):
            window.add_row(f"{group}: {reason}", str(value))
    nodes = Table(title="nodes and roles")
    nodes.add_column("what")
    nodes.add_column("value", justify="right")
    for state, count in snapshot["nodes_by_state"].items():
        nodes.add_row(f"nodes {state}", str(count))
    for role, holder in snapshot["leases"].items():
        nodes.add_row(f"lease {role}", holder or "-")
    for name, figures in snapshot["consumers"].items():
        nodes.add_row(f"{name} pending/lag", f"{figures['pending']}/{_value(figures['lag'])}")
    pools = Table(title="pools")
    for column in ("pool", "members", "running", "capacity", "free_slots", "utilization"):
        pools.add_column(column)
    for name, pool in snapshot["pools"].items():
        pools.add_row(name, *(str(pool.get(c, "")) for c in ("members", "running", "capacity")),
                      str(pool.get("free_slots", "")), str(pool["utilization"]))  # fmt: skip
    tables = [window, nodes, pools]
    if snapshot.get("queues"):
        queues = Table(title="queues (jobs waiting for a slot)")
        for column in ("pair", "waiting", "wait_p50_ms", "wait_p99_ms"):
            queues.add_column(column)
        for pair, figures in snapshot["queues"].items():
            queues.add_row(pair, str(figures["waiting"]), _value(figures["wait_p50_ms"]),
                           _value(figures["wait_p99_ms"]))  # fmt: skip
        tables.append(queues)
    return tables


def _nonzero(counts: dict[str, int]) -> str:
    shown = [f"{name} {count}" for name, count in sorted(counts.items()) if count]
    return " · ".join(shown) or "none"


def frame(snapshot: dict[str, Any] | None, label: str, height: int) -> Group:
    """One frame of ``top``: lines of figures, then as many pools as fit in ``height``
    lines (the busiest first), then the queues and a hint; never wider than the lines
    the terminal wraps, never taller than ``height``."""
    if snapshot is None:
        return Group(Text(f"{label}: no statistics yet, waiting for a worker"), Text("q quits"))
    age_ms, stale = age_of(snapshot)
    head = Text(f"{label}  published {age_ms / 1000:.0f} s ago", style="bold")
    if stale:
        head.append("  STALE: no worker publishes", style="bold red")
    latencies = (
        f"rate {snapshot['dispatch_rate_per_s']}/s  dispatch p50/p99"
        f" {_value(snapshot['dispatch_p50_ms'])}/{_value(snapshot['dispatch_p99_ms'])} ms"
        f"  e2e {_value(snapshot['e2e_p50_ms'])}/{_value(snapshot['e2e_p99_ms'])} ms"
        f"  wait p99 {_value(snapshot.get('wait_p99_ms'))} ms"
    )
    nodes = " · ".join(f"{state} {n}" for state, n in snapshot["nodes_by_state"].items())
    sessions = snapshot.get("sessions", {})
    roles = " · ".join(f"{role} {holder or '-'}" for role, holder in snapshot["leases"].items())
    lines = [
        head,
        Text(latencies),
        Text(f"counts: {_nonzero(snapshot['counts'])}", overflow="ellipsis", no_wrap=True),
        Text(
            f"rejected: {_nonzero(snapshot['rejected'])}  failed: {_nonzero(snapshot['failed'])}",
            overflow="ellipsis",
            no_wrap=True,
        ),
        Text(f"nodes: {nodes or 'none'}  sessions open: {sessions.get('open', '-')}"),
        Text(f"roles: {roles}", overflow="ellipsis", no_wrap=True),
    ]
    waiting = {p: q for p, q in snapshot.get("queues", {}).items() if q["waiting"]}
    tail = [
        Text(
            "queues: "
            + (" · ".join(f"{p} {q['waiting']}" for p, q in waiting.items()) or "none waiting"),
            overflow="ellipsis",
            no_wrap=True,
        ),
        Text("q quits", style="dim"),
    ]
    pools = sorted(snapshot["pools"].items(), key=lambda item: -item[1]["utilization"])
    room = max(0, height - len(lines) - len(tail) - 2)  # the table's header and its title
    table = Table(title=f"pools ({len(pools)})", box=None, pad_edge=False, title_justify="left")
    table.add_column("pool", no_wrap=True)
    for column in ("members", "running", "free", "used"):
        table.add_column(column, justify="right", no_wrap=True)
    shown = pools if len(pools) <= room else pools[: max(0, room - 1)]
    for name, pool in shown:
        used = f"{round(pool['utilization'] * 100)} %"
        row = (pool.get("members", ""), pool["running"], pool.get("free_slots", ""), used)
        table.add_row(name, *(str(value) for value in row))
    if len(shown) < len(pools):
        table.add_row(f"+{len(pools) - len(shown)} more (eventsched stats)", "", "", "", "")
    return Group(*lines, table, *tail)


def stats(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: AsJson = False,
) -> None:
    """The statistics snapshot the workers build every 5 s of event time."""
    found = run_on_cell(redis_url, cell, namespace, read_stats)
    if found is None:
        raise NotFound("no statistics yet: a worker writes them every 5 s of event time")
    if as_json:
        print(json.dumps(found, sort_keys=True))
        return
    for table in _tables(found):
        Console().print(table)


@contextlib.contextmanager
def _keys_one_at_a_time() -> Iterator[bool]:
    """The terminal in cbreak mode (a key is read as it is pressed) while inside; yields
    whether there is a terminal to read keys from."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(sys.stdin)
    try:
        tty.setcbreak(sys.stdin)
        yield True
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


def top(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    once: Annotated[bool, typer.Option("--once", help="render one frame and exit")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between frames")] = 1.0,
) -> None:
    """A live view of the statistics snapshot, refreshed every second; q quits."""
    keys = CellKeys(cell, namespace)
    label = f"{namespace}:{{{cell}}}"
    console = Console()

    async def main() -> None:
        client = Store(redis_url).client()
        try:
            if not await client.exists(keys.log):
                raise NotFound(f"unknown cell {label} (it has no log)")
            if once:
                console.print(frame(await read_stats(client, keys), label, console.height))
                return
            with _keys_one_at_a_time() as keyboard, Live(console=console, screen=False) as live:
                async with anyio.create_task_group() as group:
                    if keyboard:
                        group.start_soon(_quit_on_q, group.cancel_scope)
                    while True:
                        snapshot = await read_stats(client, keys)
                        live.update(frame(snapshot, label, console.height))
                        await anyio.sleep(interval)
        finally:
            await client.aclose()

    anyio.run(main)


async def _quit_on_q(scope: anyio.CancelScope) -> None:
    while True:
        key = await anyio.to_thread.run_sync(sys.stdin.read, 1, abandon_on_cancel=True)
        if key in ("q", "Q", ""):
            scope.cancel()
            return


def register(app: typer.Typer) -> None:
    app.command()(stats)
    app.command()(top)
