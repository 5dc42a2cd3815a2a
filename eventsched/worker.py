"""The applier loop: read each cell's log through its consumer group, apply batches.

One worker process applies a cell at a time (leases and takeover between several
workers are a later step). On start it first re-applies its own pending entries (those
it read but did not acknowledge before it stopped; the tracking marker makes that
harmless), then reads new ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .applier import APPLIER_GROUP, Applier, BatchResult, Entry
from .config import DecisionSettings
from .keys import CellKeys
from .store import RedisClient
from .streams import text, xreadgroup_raw

__all__ = ["DEFAULT_BATCH", "Worker", "ensure_group"]

log = logging.getLogger("eventsched.worker")

# One apply call holds Redis for its whole batch; about 40 us per entry on our machines
# keeps a batch of 32 near 1.5 ms (bench/dispatch_scale.py prints the figure).
DEFAULT_BATCH = 32
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0


async def ensure_group(client: RedisClient, stream: str, group: str) -> None:
    """Create the group (and the stream) unless it exists: safe to call at any time."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Worker:
    def __init__(
        self,
        client: RedisClient,
        cells: Sequence[CellKeys],
        settings: DecisionSettings | None = None,
        name: str = "worker-1",
        batch_size: int = DEFAULT_BATCH,
        block_ms: int = 200,
    ) -> None:
        if not cells:
            raise ValueError("a worker needs at least one cell")
        self.client = client
        self.name = name
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.appliers = {keys.log: Applier(client, keys, settings) for keys in cells}
        # "0" reads this consumer's own pending entries first; ">" then reads new ones.
        self._cursor = dict.fromkeys(self.appliers, "0")
        self.totals = BatchResult(0, 0, 0)

    async def setup(self) -> None:
        for stream in self.appliers:
            await ensure_group(self.client, stream, APPLIER_GROUP)

    async def step(self, block: bool = True) -> int:
        """Read and apply at most one batch per cell; returns how many entries were read."""
        waiting = all(cursor == ">" for cursor in self._cursor.values())
        reply = await xreadgroup_raw(
            self.client,
            APPLIER_GROUP,
            self.name,
            self._cursor,
            self.batch_size,
            self.block_ms if block and waiting else None,
        )
        read = 0
        for stream_name, raw_entries in reply:
            stream = text(stream_name)
            if not raw_entries and self._cursor[stream] == "0":
                self._cursor[stream] = ">"
                continue
            # A pending entry trimmed from the stream comes back without fields.
            entries: list[Entry] = [(eid, fields or {}) for eid, fields in raw_entries]
            read += len(entries)
            result = await self.appliers[stream].apply(entries)
            self.totals = BatchResult(
                self.totals.applied + result.applied,
                self.totals.skipped + result.skipped,
                self.totals.dead_lettered + result.dead_lettered,
            )
        return read

    async def drain(self) -> int:
        """Apply everything in the logs now, without blocking; returns entries read."""
        await self.setup()
        total = 0
        while True:
            reading_new = all(cursor == ">" for cursor in self._cursor.values())
            read = await self.step(block=False)
            if not read and reading_new:
                return total
            total += read

    async def run(self, stop: anyio.Event) -> None:
        """Apply until ``stop`` is set; the batch in hand is always finished first."""
        await self.setup()
        backoff = 0.0  # > 0 while Redis is unreachable: one log line per outage
        while not stop.is_set():
            try:
                await self.step()
                if backoff:
                    log.warning("redis reachable again; applying")
                    backoff = 0.0
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if not backoff:
                    log.warning("redis unreachable (%s); retrying with backoff", exc)
                backoff = min(max(backoff * 2, _BACKOFF_MIN_S), _BACKOFF_MAX_S)
                await anyio.sleep(backoff)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group missing (flushed or restarted?); recreating")
                await self.setup()
