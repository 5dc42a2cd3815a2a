"""The decision settings in force in a cell: its settings hash, which apply.lua writes as
it applies settings_changed events, over the defaults (model.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from eventsched.model.keys import CellKeys
from eventsched.model.settings import DEFAULTS, DecisionSettings
from eventsched.store.client import RedisClient
from eventsched.store.streams import text

__all__ = ["CellSettings", "read_settings", "seed_settings"]

_SINCE = "since"


@dataclass(frozen=True)
class CellSettings:
    settings: DecisionSettings
    since: str | None  # the log ID of the latest change; None: the log changed none


async def read_settings(client: RedisClient, keys: CellKeys) -> CellSettings:
    """The settings in force once the cell applied what it has applied. A ValueError
    says so in one line when the hash holds what no script wrote."""
    stored = {
        text(name): text(value) for name, value in (await client.hgetall(keys.settings)).items()
    }
    since = stored.pop(_SINCE, None)
    changes: dict[str, int] = {}
    for name, value in sorted(stored.items()):
        if not value.lstrip("-").isdigit():
            raise ValueError(f"{keys.settings} holds {name}={value!r}, not an integer")
        changes[name] = int(value)
    try:
        return CellSettings(DEFAULTS.changed(changes), since)
    except ValueError as exc:
        raise ValueError(f"{keys.settings} holds settings no script wrote: {exc}") from None


async def seed_settings(client: RedisClient, keys: CellKeys, settings: DecisionSettings) -> None:
    """Put ``settings`` in force in an empty cell, as a log that changed them before its
    first entry would leave it (a replay fixture's header): the ones that differ from the
    defaults, for apply.lua and (group_max_utterances) for groups.lua."""
    changes = settings.differences()
    if changes:
        await client.hset(keys.settings, mapping=changes)  # type: ignore[arg-type]
    if "group_max_utterances" in changes:
        await client.hset(keys.meta, "group_max", changes["group_max_utterances"])
