"""Changing a cell's decision settings: what an operator asks for (``KEY=VALUE`` words or
a TOML file) is checked against the settings in force, and becomes one settings_changed
event in the log, which holds from its place there on (apply.lua)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

from eventsched.model.events import SettingsChanged
from eventsched.model.keys import CellKeys
from eventsched.model.settings import check_changes
from eventsched.projections.cell_settings import read_settings
from eventsched.store.append import append
from eventsched.store.client import RedisClient
from eventsched.store.streams import id_after, text

__all__ = ["change_settings", "parse_assignments", "read_settings_file", "wait_applied"]

_POLL_S = 0.05


def parse_assignments(words: Sequence[str]) -> dict[str, int]:
    """``["rate_burst=5", ...]`` as settings; a ValueError names the first bad word."""
    if not words:
        raise ValueError("give at least one KEY=VALUE")
    changes: dict[str, int] = {}
    for word in words:
        name, equals, value = word.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name:
            raise ValueError(f"{word!r}: expected KEY=VALUE")
        if not value.lstrip("-").isdigit():
            raise ValueError(f"{name}: {value!r} is not an integer")
        if name in changes:
            raise ValueError(f"{name} is given twice")
        changes[name] = int(value)
    check_changes(changes)
    return changes


def read_settings_file(path: Path) -> dict[str, int]:
    """The settings a TOML file sets, at its top level (``rate_burst = 5``); a ValueError
    names the file and what is wrong with it."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML ({exc})") from None
    if not document:
        raise ValueError(f"{path}: sets no setting")
    try:
        check_changes(document)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return document


async def change_settings(client: RedisClient, keys: CellKeys, changes: Mapping[str, int]) -> str:
    """Append ``changes``, checked with the settings in force first (a ValueError, and
    nothing appended, when they break a rule); returns the change's log ID. Values equal
    to those in force are appended too: a change still waiting in the log may differ."""
    (await read_settings(client, keys)).settings.changed(changes)
    return await append(client, keys, SettingsChanged(settings=dict(changes)))


async def wait_applied(client: RedisClient, keys: CellKeys, entry_id: str, within_s: float) -> bool:
    """Whether the dispatch projection applies the log up to ``entry_id`` within
    ``within_s`` seconds (it is in force then)."""
    with anyio.move_on_after(within_s):
        while True:
            applied = await client.hget(keys.meta, "applied")
            if applied is not None and not id_after(entry_id, text(applied)):
                return True
            await anyio.sleep(_POLL_S)
    return False
