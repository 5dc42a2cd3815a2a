"""A role of a cell as one worker works it (dispatch.worker runs them): the role's
lease, the takeover of its consumer group's pending entries (XAUTOCLAIM through
claim.lua, dead-lettering entries trimmed before anyone applied them), then reading
batches and applying them in calls, an entry the script fails on set aside.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

import anyio
from redis.exceptions import ResponseError

from eventsched.dispatch.applier import (
    FULL_COST,
    Applier,
    Entry,
    EntryFailed,
    NotLeader,
    Prepared,
    Projection,
    retrieved,
)
from eventsched.dispatch.lease import Lease
from eventsched.projections.cell_settings import read_settings
from eventsched.projections.directory import list_in_directory
from eventsched.projections.stats import StatsBuilder
from eventsched.store.client import RedisClient
from eventsched.store.scripts import register
from eventsched.store.streams import StreamReply, text, xreadgroup_raw

__all__ = ["READ_CALLS", "Role", "ensure_group"]

log = logging.getLogger("eventsched.worker")

# A read takes many calls' worth of finalizes (dispatch.worker DEFAULT_BATCH each): a
# heartbeat costs a quarter of one, so with four a read of heartbeats was one call and
# nothing overlapped it (bench/throughput.py: heartbeat folds 26-29k/s -> 41-46k/s with
# sixteen and three calls in flight, applier._IN_FLIGHT).
READ_CALLS = 16
_CLAIM_PAGE = 100


async def ensure_group(client: RedisClient, stream: str, group: str) -> None:
    """Create the group (and the stream) unless it exists: safe to call at any time."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Role:
    """One projection of one cell, as one worker works it: its lease, the takeover of
    its pending entries, and reading and applying batches."""

    def __init__(
        self,
        client: RedisClient,
        projection: Projection,
        worker: str,
        lease_ms: int,
        batch_size: int,
        block_ms: int,
        stats: StatsBuilder,
    ) -> None:
        self.client = client
        self.worker = worker
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.stats = stats
        self.projection = projection
        self.lease = Lease(client, projection.lease_key, worker, lease_ms)
        self._claim = register(client, "claim")
        self.cursor = "0"  # "0": this consumer's pending entries first; then ">"
        self.taken = False
        self.taken_event = anyio.Event()  # set while taken: the ingress task waits on it
        self._ahead: asyncio.Future[StreamReply] | None = None

    @property
    def label(self) -> str:
        return f"{self.projection.keys.cell}/{self.projection.role}"

    async def take_over(self) -> None:
        """Claim every pending entry of the group, then apply from the oldest."""
        projection = self.projection
        await ensure_group(self.client, projection.stream, projection.group)
        cursor = "0-0"
        while True:
            reply = await self._claim(
                keys=[
                    projection.stream,
                    projection.keys.dlq,
                    projection.lease_key,
                    projection.keys.meta,
                ],
                args=[projection.group, self.worker, cursor, _CLAIM_PAGE],
            )
            if reply[0] == -1:
                raise NotLeader(projection.lease_key)
            cursor, dead = text(reply[0]), int(reply[2])
            if dead:
                log.warning("%s: %d pending entries were trimmed; dead-lettered", self.label, dead)
            if cursor == "0-0":
                break
        self.cursor, self.taken = "0", True
        self.taken_event.set()
        log.info("%s: taken over by %s", self.label, self.worker)
        if isinstance(projection, Applier):
            await list_in_directory(self.client, [projection.keys])
            await self._log_settings()

    async def _log_settings(self) -> None:
        """Say which settings the cell's log changed: they are the cell's, whichever
        worker applies it."""
        try:
            found = await read_settings(self.client, self.projection.keys)
        except ValueError as exc:
            log.error("%s: %s", self.label, exc)
            return
        changed = found.settings.differences()
        if changed:
            values = " ".join(f"{name}={value}" for name, value in sorted(changed.items()))
            log.info(
                "%s: settings changed by the log (since %s): %s", self.label, found.since, values
            )

    async def group_missing(self) -> bool:
        stream, group = self.projection.stream, self.projection.group
        if not await self.client.exists(stream):
            return True
        groups = await self.client.xinfo_groups(stream)
        return group not in {text(found["name"]) for found in groups}

    def lose(self) -> None:
        self.drop_read_ahead()
        self.taken = False
        if self.taken_event.is_set():
            self.taken_event = anyio.Event()
        self.lease.held = False

    def _read(self, block: bool) -> Awaitable[StreamReply]:
        projection = self.projection
        return xreadgroup_raw(
            self.client,
            projection.group,
            self.worker,
            {projection.stream: self.cursor},
            self.batch_size * READ_CALLS,
            self.block_ms if block and self.cursor == ">" else None,
        )

    def drop_read_ahead(self) -> None:
        """Forget a read issued ahead: entries it took stay pending for this consumer,
        and whoever takes the role next claims them."""
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None

    async def step(self, block: bool) -> int:
        """Read and apply one batch; returns how many entries were read."""
        projection = self.projection
        reply = []
        if self._ahead is not None:
            reply, self._ahead = await self._ahead, None
        if not any(found for _, found in reply):
            reply = await self._read(block)
        read = 0
        for _, raw_entries in reply:
            if not raw_entries and self.cursor == "0":
                self.cursor = ">"
                continue
            # A pending entry trimmed from the stream comes back without fields.
            entries: list[Entry] = [(eid, fields or {}) for eid, fields in raw_entries]
            read += len(entries)
            if self.cursor == ">" and len(entries) == self.batch_size * READ_CALLS:
                # A full read: more is waiting. Read it while this batch is applied.
                self._ahead = asyncio.ensure_future(self._read(block=False))
                self._ahead.add_done_callback(retrieved)
            calls = await self._apply(entries)
            if isinstance(projection, Applier):
                self.count_dispatches(calls)
        return read

    def count_dispatches(self, calls: Sequence[Prepared]) -> None:
        """The dispatch statistics of applied calls (the dispatch role's)."""
        for call in calls:
            self.stats.dispatched_after(call.finalize_ms, call.applied_wall_ms)

    async def set_aside(self, entry: Entry | None, failed: EntryFailed) -> None:
        """Dead-letter an entry the script failed on (``apply_error`` and the error), in
        place of applying it, and say so."""
        if entry is not None:
            assert isinstance(self.projection, Applier)
            await self.projection.dead_letter(entry, f"apply_error: {failed.error}")
        log.error("%s: entry %s dead-lettered: %s", self.label, text(failed.entry_id), failed.error)

    async def _apply(self, entries: Sequence[Entry]) -> list[Prepared]:
        """Apply entries in calls. When the script raises on one (a case no check
        foresaw), the ones before it have applied: that one is dead-lettered
        (``apply_error`` and the error) and the rest go on, so no entry stops the cell."""
        projection = self.projection
        budget = self.batch_size * FULL_COST
        calls: list[Prepared] = []
        while entries:
            try:
                calls += await projection.apply_in_calls(entries, budget)
                return calls
            except EntryFailed as failed:
                if not isinstance(projection, Applier):
                    raise  # decisions come from apply.lua alone: a bug, not bad input
                position = [entry_id for entry_id, _ in entries].index(failed.entry_id)
                await self.set_aside(entries[position], failed)
                entries = entries[position + 1 :]
        return calls
