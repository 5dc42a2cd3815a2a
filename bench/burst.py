"""Goodput under a burst: a cell of NODES instant echo nodes with SLOTS slots each gets a
wave of twice its slots in finalizes every WAVE_MS for 2 s, then quiet, as a room of
speakers pausing together does. Between waves the nodes keep up (a wave's jobs take a few
ms), so every finalize could be served; what a burst loses is what finds no free slot at
the instant it arrives. Run twice in one go, with queue_wait_ms 0 (rejected at once) and
with the default (lua/queue.lua): the share of finalizes the sessions were told ``ok``,
and the p99 of the wait for a slot (event time, from the dispatch decisions: 0 for a
finalize placed at once).

    python bench/burst.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet
from bench.alone import percentile, print_figures
from bench.e2e import live_sessions
from eventsched.clients.session import Session
from eventsched.model.events import Event, SettingsChanged
from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient, Store
from eventsched.store.streams import read_stream

__all__ = ["measure"]

NODES, SLOTS = 4, 2
WAVES, WAVE_MS = 20, 100  # 2 s of waves
_DRAIN_S = 10.0


async def _run(url: str, namespace: str, queue_wait_ms: int | None) -> tuple[float, float]:
    """(share answered ok, p99 wait ms) of one burst on a cell of its own."""
    keys = CellKeys("c0", namespace)
    client: RedisClient = Store(url).client()
    settings = dict(fleet.SETTINGS_CHANGED.settings)
    if queue_wait_ms is not None:
        settings["queue_wait_ms"] = queue_wait_ms
    first: list[Event] = [SettingsChanged(settings=settings), fleet.POOLS]
    waits: list[float] = []
    try:
        async with live_sessions(url, client, keys, first, NODES, SLOTS, 2 * NODES * SLOTS) as live:
            sessions = live.sessions
            ok = await _burst(sessions)
            waits = [
                float(fields.get("waited", 0))
                async for _, fields in read_stream(client, keys.decisions)
                if fields["k"] == "d" and fields["att"] == "1"
            ]
    finally:
        await client.aclose()
    return ok / (WAVES * len(sessions)), percentile(waits, 0.99) if waits else float("inf")


async def _burst(sessions: list[Session]) -> int:
    """Send the waves; returns how many outcomes were ok (missing ones count as not)."""
    told = {"ok": 0, "all": 0}
    done = anyio.Event()

    async def listen(session: Session) -> None:
        async for outcome in session.outcomes():
            told["all"] += 1
            told["ok"] += outcome.status == "ok"
            if told["all"] == WAVES * len(sessions):
                done.set()

    async with anyio.create_task_group() as group:
        for session in sessions:
            group.start_soon(listen, session)
        began = time.perf_counter()
        for wave in range(WAVES):
            async with anyio.create_task_group() as senders:  # the wave arrives at once
                for session in sessions:
                    senders.start_soon(session.finalize, wave, "pause", f"a/{wave}", 1000)
            await anyio.sleep(max(0.0, began + (wave + 1) * WAVE_MS / 1000 - time.perf_counter()))
        with anyio.move_on_after(_DRAIN_S):
            await done.wait()
        group.cancel_scope.cancel()
    return told["ok"]


async def measure(url: str) -> dict[str, float]:
    rejecting, _ = await _run(url, "benchburst0", 0)
    queued, wait_p99 = await _run(url, "benchburstq", None)
    return {
        "burst_ok_share_reject": round(rejecting, 3),
        "burst_ok_share_default": round(queued, 3),
        "burst_wait_p99_ms": round(wait_p99, 1),
    }


if __name__ == "__main__":
    anyio.run(print_figures, measure)
