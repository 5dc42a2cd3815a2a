"""``eventsched settings``: the decision settings of a cell, shown and changed through
its log (docs/CLI.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from eventsched.model.keys import DEFAULT_CELL, DEFAULT_NAMESPACE, CellKeys
from eventsched.model.settings import DEFAULTS, SETTING_NAMES, bounds
from eventsched.ops.tuning import (
    change_settings,
    parse_assignments,
    read_settings_file,
    wait_applied,
)
from eventsched.projections.cell_settings import read_settings
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

settings_app = command_group(
    help="The cell's decision settings: changed by settings_changed events in its log.",
    no_args_is_help=True,
)

Wait = Annotated[
    float,
    typer.Option(min=0, help="wait up to S s for the dispatch worker to apply the change"),
]


@settings_app.command("show")
def show(
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: AsJson = False,
) -> None:
    """The settings in force, and since which log entry."""
    found = run_on_cell(redis_url, cell, namespace, read_settings)
    values = found.settings.model_dump()
    if as_json:
        defaults = DEFAULTS.model_dump()
        print(
            json.dumps(
                {"cell": cell, "since": found.since, "settings": values, "defaults": defaults},
                sort_keys=True,
            )
        )
        return
    rows = []
    for name in SETTING_NAMES:
        least, most = bounds(name)
        default = getattr(DEFAULTS, name)
        rows.append(
            [
                name,
                str(values[name]),
                "" if values[name] == default else str(default),
                f"{least}..{most}",
            ]
        )
    since = f"last changed at log entry {found.since}" if found.since else "the log changed none"
    print_table(
        f"settings of {namespace}:{{{cell}}} ({since})",
        ["setting", "value", "default", "range"],
        rows,
    )


def _change(url: str, cell: str, namespace: str, changes: dict[str, int], wait: float) -> None:
    async def work(client: RedisClient, keys: CellKeys) -> tuple[str, bool]:
        entry_id = await change_settings(client, keys, changes)
        return entry_id, await wait_applied(client, keys, entry_id, wait)

    entry_id, applied = run_on_cell(url, cell, namespace, work)
    values = " ".join(f"{name}={value}" for name, value in sorted(changes.items()))
    print(f"settings_changed {entry_id}: {values}")
    if applied:
        print("in force: the dispatch worker applied it")
    else:
        print(f"not applied within {wait:g} s: in force once a dispatch worker reaches it")


@settings_app.command("set")
def set_settings(
    assignments: Annotated[
        list[str], typer.Argument(metavar="KEY=VALUE...", help="e.g. rate_burst=20")
    ],
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    wait: Wait = 5.0,
) -> None:
    """Change settings: checked against the ones in force, then one event in the log."""
    _change(redis_url, cell, namespace, parse_assignments(assignments), wait)


@settings_app.command("apply")
def apply_file(
    path: Annotated[Path, typer.Argument(metavar="FILE.toml", help="top-level KEY = VALUE lines")],
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    wait: Wait = 5.0,
) -> None:
    """Change the settings a TOML file names, as ``set`` does (the others stay)."""
    _change(redis_url, cell, namespace, read_settings_file(path), wait)


def register(app: typer.Typer) -> None:
    app.add_typer(settings_app, name="settings")
