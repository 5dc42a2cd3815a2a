"""Boundary logs: one structured line per job lifecycle step, read from the decisions
stream (so they cost the applier nothing) by the worker holding the cell's dispatch
role. At INFO only the rare steps (failures, lost nodes, MODEL_NOT_AVAILABLE windows,
one line per window) and a summary every 10 s; at DEBUG every step."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio

from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient
from eventsched.store.streams import last_id, text, xread_raw

__all__ = ["describe", "follow_decisions", "log_delivered"]

log = logging.getLogger("eventsched.jobs")

_SUMMARY_EVERY_S = 10.0
_GATHER_S = 0.1
_STEPS = {
    "x": "rejected",
    "r": "result",
    "f": "failed",
    "o": "completed",
    "l": "node_lost",
    "m": "unavailable_window",
    "q": "quarantined",
}
_RARE = {"f", "l", "m", "q"}
# The decision fields statistics count by (stats.StatsBuilder.decision).
_COUNTED = tuple(
    (name.encode(), name) for name in ("k", "att", "reason", "err", "fin", "at", "pair", "waited")
)


def describe(fields: dict[str, str]) -> tuple[int, str]:
    """The level and the line for one decision."""
    kind = fields.get("k", "?")
    if kind == "d":
        step = "dispatched" if fields.get("att") == "1" else "retried"
    else:
        step = _STEPS.get(kind, kind)
    parts = [f"step={step}"]
    for name, label in (
        ("job", "job"),
        ("sid", "session"),
        ("idx", "utterance"),
        ("att", "attempt"),
        ("node", "node"),
        ("pool", "pool"),
        ("pair", "pair"),
        ("ok", "ok"),
        ("reason", "reason"),
        ("err", "error"),
        ("until", "until_ms"),
        ("at", "log_id"),
    ):
        if fields.get(name):
            parts.append(f"{label}={fields[name]}")
    return (logging.INFO if kind in _RARE else logging.DEBUG), " ".join(parts)


def log_delivered(cell: str, delivered: list[tuple[str, int]]) -> None:
    if log.isEnabledFor(logging.DEBUG):
        for session_id, index in delivered:
            log.debug("step=delivered cell=%s session=%s utterance=%d", cell, session_id, index)


async def follow_decisions(
    client: RedisClient,
    keys: CellKeys,
    stop: anyio.Event,
    active: Callable[[], bool],
    on_decision: Callable[[dict[str, str]], None],
    every_pass: Callable[[], Awaitable[None]],
) -> None:
    """Follow the cell's decisions as they are appended, until ``stop`` or ``active()``
    turns false: log each (see the module doc) and hand it to ``on_decision``; call
    ``every_pass`` after each read (at least every half second)."""
    cursor = await last_id(client, keys.decisions) or "0-0"
    counts: Counter[str] = Counter()
    summary_at = time.monotonic() + _SUMMARY_EVERY_S
    while not stop.is_set() and active():
        reply = await xread_raw(client, {keys.decisions: cursor}, block_ms=500)
        for _, entries in reply:
            for entry_id, raw in entries:
                cursor = text(entry_id)
                if not active():
                    continue
                # Only the fields statistics read: results carry texts nobody needs here.
                on_decision({name: text(raw[key]) for key, name in _COUNTED if key in raw})
                kind = text(raw.get(b"k", b"?"))
                counts[kind] += 1
                # Most steps log at DEBUG: the line is built only when it is written.
                if log.isEnabledFor(logging.INFO if kind in _RARE else logging.DEBUG):
                    level, line = describe({text(k): text(v) for k, v in raw.items()})
                    log.log(level, "cell=%s %s", keys.cell, line)
        if active():
            await every_pass()
        # Statistics and logs need no haste: letting decisions gather for a moment makes
        # one read of many instead of a wake per decision, off the dispatch path.
        with anyio.move_on_after(_GATHER_S):
            await stop.wait()
        if time.monotonic() >= summary_at:
            summary_at = time.monotonic() + _SUMMARY_EVERY_S
            if counts and active():
                by_step = " ".join(f"{_STEPS.get(k, k)}={n}" for k, n in sorted(counts.items()))
                log.info("cell=%s last %.0fs: %s", keys.cell, _SUMMARY_EVERY_S, by_step)
            counts.clear()
