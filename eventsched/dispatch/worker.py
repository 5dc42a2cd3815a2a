"""Workers: any number join a cell's consumer groups; for each role of each cell one
holds the lease and works, the others stand by.

Roles per cell: ``dispatch`` (apply.lua over the log, and over what confined principals
sent to their ingress streams: dispatch.ingress), ``groups`` (groups.lua over the
decisions stream) and ``ticker`` (appends a tick to the log every ``tick_ms``). A worker
that takes a role first claims every pending entry of the role's group (XAUTOCLAIM,
dead-lettering entries trimmed before anyone applied them), applies them in ID order,
then reads new ones. The tracking marker makes entries already applied harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import anyio
from redis.exceptions import RedisError, ResponseError

from eventsched.dispatch.applier import (
    FULL_COST,
    Applier,
    Entry,
    EntryFailed,
    GroupsApplier,
    NotLeader,
    Prepared,
    Projection,
    retrieved,
)
from eventsched.dispatch.ingress import Bells, Ingress
from eventsched.dispatch.job_log import follow_decisions
from eventsched.dispatch.lease import Lease
from eventsched.dispatch.retention import retain, trim_inboxes
from eventsched.dispatch.sharing import Membership, RoleId, assign
from eventsched.model.events import ENTRY_FIELD, Tick, encode_event
from eventsched.model.keys import PROJECTIONS, CellKeys
from eventsched.projections.cell_settings import read_settings
from eventsched.projections.directory import find_cells, list_in_directory, publish_offer
from eventsched.projections.snapshot import applied_ms
from eventsched.projections.stats import StatsBuilder, cell_shape
from eventsched.store.client import UNREACHABLE, RedisClient
from eventsched.store.scripts import register
from eventsched.store.streams import StreamReply, text, xrange_raw, xreadgroup_raw

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_RETAIN_S",
    "Worker",
    "ensure_group",
]

log = logging.getLogger("eventsched.worker")

# One apply call holds Redis for its whole batch. A finalize decision costs 40-80 us of
# Redis time on our machines (bench/dispatch_scale.py; the machine is noisy), so 24
# finalizes hold it for under 2 ms, the most we let one call take from other clients.
# Calls are cut by cost (applier.ENTRY_COST): a call holds 24 finalizes or their worth,
# 96 heartbeats, say. A read takes several calls' worth, so that each call's arguments
# are built while the one before runs.
DEFAULT_BATCH = 24
_READ_CALLS = 4
_CLAIM_PAGE = 100
_TRIM_EVERY_S = 5.0
# The worker command's retention window: ten minutes of log at 1,000 events/s is about
# 600,000 entries, some 150 MB, and enough to record what just went wrong.
DEFAULT_RETAIN_S = 600
_INBOXES_PER_TRIM = 256  # a round's slice of the nodes: 10,000 nodes in about 3 minutes
_STATS_CHECK_S = 0.25  # how often the follower asks whether a stats window has ended
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0
_SCAN_EVERY_S = 30.0  # --all-cells: the directory every beat, a SCAN for unlisted cells this often
_TICK = encode_event(Tick())
_UNREACHABLE = UNREACHABLE
# What a role loop waits out: Redis unreachable (a cluster failing over), or refusing.
_REFUSED: tuple[type[Exception], ...] = (*UNREACHABLE, ResponseError)
_REFUSED_OR_FAILED: tuple[type[Exception], ...] = (*_REFUSED, EntryFailed)


async def ensure_group(client: RedisClient, stream: str, group: str) -> None:
    """Create the group (and the stream) unless it exists: safe to call at any time."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _until(stop: anyio.Event, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``task`` until ``stop``, then cancel it: for tasks that hold no batch in hand
    (following, listening, waiting for ingress), which end at once instead of waiting
    out a blocking read."""
    async with anyio.create_task_group() as group:
        group.start_soon(task)
        await stop.wait()
        group.cancel_scope.cancel()


class _Role:
    """One projection of one cell, as this worker works it."""

    def __init__(self, worker: Worker, projection: Projection) -> None:
        self.worker = worker
        self.projection = projection
        self.lease = Lease(worker.client, projection.lease_key, worker.name, worker.lease_ms)
        self._claim = register(worker.client, "claim")
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
        await ensure_group(self.worker.client, projection.stream, projection.group)
        cursor = "0-0"
        while True:
            reply = await self._claim(
                keys=[
                    projection.stream,
                    projection.keys.dlq,
                    projection.lease_key,
                    projection.keys.meta,
                ],
                args=[projection.group, self.worker.name, cursor, _CLAIM_PAGE],
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
        log.info("%s: taken over by %s", self.label, self.worker.name)
        if isinstance(projection, Applier):
            await list_in_directory(self.worker.client, [projection.keys])
            await self._log_settings()

    async def _log_settings(self) -> None:
        """Say which settings the cell's log changed: they are the cell's, whichever
        worker applies it."""
        try:
            found = await read_settings(self.worker.client, self.projection.keys)
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
        if not await self.worker.client.exists(stream):
            return True
        groups = await self.worker.client.xinfo_groups(stream)
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
            self.worker.client,
            projection.group,
            self.worker.name,
            {projection.stream: self.cursor},
            self.worker.batch_size * _READ_CALLS,
            self.worker.block_ms if block and self.cursor == ">" else None,
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
            if self.cursor == ">" and len(entries) == self.worker.batch_size * _READ_CALLS:
                # A full read: more is waiting. Read it while this batch is applied.
                self._ahead = asyncio.ensure_future(self._read(block=False))
                self._ahead.add_done_callback(retrieved)
            calls = await self._apply(entries)
            if isinstance(projection, Applier):
                self.count_dispatches(calls)
        return read

    def count_dispatches(self, calls: Sequence[Prepared]) -> None:
        """The dispatch statistics of applied calls (the dispatch role's)."""
        stats = self.worker.stats[self.projection.keys.cell]
        for call in calls:
            stats.dispatched_after(call.finalize_ms, call.applied_wall_ms)

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
        budget = self.worker.batch_size * FULL_COST
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


class Worker:
    """Works the roles of its cells. With ``all_cells_of`` (a namespace) it works every
    cell of that namespace, found in its directory (and by SCAN now and then), picks up
    cells listed later, and shares their roles with the namespace's other such workers
    (dispatch.sharing); without, it contends for every role of ``cells``."""

    def __init__(
        self,
        client: RedisClient,
        cells: Sequence[CellKeys],
        name: str = "worker-1",
        batch_size: int = DEFAULT_BATCH,
        block_ms: int = 200,
        lease_ms: int = 2000,
        tick_ms: int = 200,
        retain_ms: int | None = None,
        projections: Sequence[str] = PROJECTIONS,
        all_cells_of: str | None = None,
    ) -> None:
        if not cells and all_cells_of is None:
            raise ValueError("a worker needs at least one cell")
        self.client = client
        self.name = name
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.lease_ms = lease_ms
        self.tick_ms = tick_ms
        self.retain_ms = retain_ms
        self.projections = tuple(projections)
        self.ticks = "dispatch" in projections
        self._trimmed_at: dict[str, float] = {}  # cell -> monotonic time of its last trim
        self._inboxes_from: dict[str, int] = {}  # cell -> the next node slice to trim
        self.cells: list[CellKeys] = []
        self.roles: list[_Role] = []
        self.stats: dict[str, StatsBuilder] = {}
        self.ingress: dict[str, Ingress] = {}
        self._bells = Bells(client, [])
        self._running: tuple[anyio.abc.TaskGroup, anyio.Event] | None = None
        self.all_cells_of = all_cells_of
        # Shared: whose each role is (None: contend for all); nothing until the first beat.
        self.assigned: dict[RoleId, str] | None = None if all_cells_of is None else {}
        self._membership = (
            None
            if all_cells_of is None
            else Membership(client, all_cells_of, name, ttl_ms=3 * lease_ms)
        )
        for keys in cells:
            self.add_cell(keys)

    @property
    def role_names(self) -> tuple[str, ...]:
        return (*self.projections, "ticker") if self.ticks else self.projections

    def mine(self, cell: str, role: str) -> bool:
        """Whether this worker contends for the role (always, unless shared)."""
        return self.assigned is None or self.assigned.get((cell, role)) == self.name

    def add_cell(self, keys: CellKeys) -> None:
        """Work one more cell (at once, when running)."""
        if keys in self.cells:
            return
        kinds: dict[str, type[Applier] | type[GroupsApplier]] = {
            "dispatch": Applier,
            "groups": GroupsApplier,
        }
        self.cells.append(keys)
        roles = [
            _Role(self, kinds[kind](self.client, keys, self.name)) for kind in self.projections
        ]
        self.roles += roles
        self.stats[keys.cell] = StatsBuilder()
        self.ingress[keys.cell] = Ingress(self.client, keys)
        if "dispatch" in self.projections:
            self._bells.add(self.ingress[keys.cell])
        if self._running is not None:
            self._start(keys, roles, *self._running)

    def _start(
        self, keys: CellKeys, roles: Sequence[_Role], group: anyio.abc.TaskGroup, stop: anyio.Event
    ) -> None:
        for role in roles:
            group.start_soon(self._run_role, role, stop)
            if isinstance(role.projection, Applier):
                group.start_soon(self._follow, role, stop)
                group.start_soon(self._run_ingress, role, stop)
        if self.ticks:
            group.start_soon(self._run_ticker, keys, stop)

    async def drain(self) -> int:
        """Take every role now and apply everything in the streams without blocking;
        returns entries read. For tests and tools: raises NotLeader when a role is held
        by another worker."""
        total = 0
        while True:
            reading_new = all(role.taken and role.cursor == ">" for role in self.roles)
            read = 0
            for role in self.roles:
                if not role.taken:
                    if not await role.lease.keep():
                        raise NotLeader(role.lease.key)
                    await role.take_over()
                try:
                    read += await role.step(block=False)
                    if isinstance(role.projection, Applier):
                        self.ingress[role.projection.keys.cell].missed()
                        read += await self._admit(role)
                except NotLeader:
                    role.lose()  # lost since it was taken: take it again, or raise above
                    reading_new = False
            if not read and reading_new:
                return total
            total += read

    async def release(self) -> None:
        """Give up every lease, so standbys take over now rather than after the TTL."""
        for role in self.roles:
            role.drop_read_ahead()
            # Unreachable: the lease expires by its TTL instead.
            with contextlib.suppress(RedisError, OSError):
                await role.lease.release()
            role.taken = False

    async def run(self, stop: anyio.Event) -> None:
        """Work every role this worker can hold until ``stop`` is set; the batch in hand
        is finished first, then the leases are released."""
        try:
            async with anyio.create_task_group() as group:
                self._running = (group, stop)
                for keys in list(self.cells):
                    self._start(
                        keys, [r for r in self.roles if r.projection.keys == keys], group, stop
                    )
                if "dispatch" in self.projections:
                    group.start_soon(_until, stop, self._bells.listen)
                if self._membership is not None:
                    group.start_soon(self._share, self._membership, stop)
        finally:
            self._running = None
            with anyio.CancelScope(shield=True):
                await self.release()
                if self._membership is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await self._membership.leave()
            log.info("worker %s: stopped, leases released", self.name)

    async def _share(self, membership: Membership, stop: anyio.Event) -> None:
        """Every beat (a third of the lease's TTL): pick up listed cells (and, now and
        then, unlisted ones with a log), renew the membership, and work out whose each
        role is. Unreachable: the last assignment stands, and leases expire as ever."""
        assert self.all_cells_of is not None
        scanned_at = float("-inf")
        while not stop.is_set():
            try:
                scan = time.monotonic() >= scanned_at + _SCAN_EVERY_S
                for keys in await find_cells(self.client, self.all_cells_of, scan=scan):
                    self.add_cell(keys)
                if scan:
                    scanned_at = time.monotonic()
                members = await membership.renew()
                roles = [(keys.cell, role) for keys in self.cells for role in self.role_names]
                self.assigned = assign(roles, members)
            except _REFUSED as exc:
                log.debug("worker %s: membership not renewed (%s)", self.name, exc)
            await self._pause(stop, self.lease_ms / 3000)

    async def _group_missing(self, role: _Role, error: Exception) -> bool:
        """Whether a refusal was for a missing group or stream (never for a cluster
        failing over, or while Redis cannot be asked)."""
        if not isinstance(error, ResponseError) or isinstance(error, _UNREACHABLE):
            return False
        try:
            return await role.group_missing()
        except _REFUSED:
            return False

    async def _pause(self, stop: anyio.Event, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await stop.wait()

    async def _run_role(self, role: _Role, stop: anyio.Event) -> None:
        backoff = 0.0  # > 0 while Redis is unreachable or refuses: one log line per outage
        cell, name = role.projection.keys.cell, role.projection.role
        while not stop.is_set():
            try:
                if not self.mine(cell, name):
                    if role.lease.held:
                        role.drop_read_ahead()
                        await role.lease.release()
                        log.info("%s: handed on to %s", role.label, self._holder(cell, name))
                    role.lose()
                    await self._pause(stop, self.lease_ms / 3000)
                    continue
                if not await role.lease.keep():
                    if role.taken:
                        log.warning("%s: lease lost; standing by", role.label)
                    role.lose()
                    await self._pause(stop, self.lease_ms / 3000)
                    continue
                if not role.taken:
                    await role.take_over()
                await role.step(block=True)
                if self.retain_ms is not None and isinstance(role.projection, Applier):
                    await self._trim(role.projection.keys)
                if backoff:
                    log.warning("%s: redis reachable again", role.label)
                    backoff = 0.0
            except NotLeader:
                log.warning("%s: lease lost; standing by", role.label)
                role.lose()
            except _REFUSED_OR_FAILED as exc:
                # The group or the stream is gone (FLUSHALL, a restart without
                # persistence, a stream deleted under a blocked read). Error texts differ
                # between servers, so ask Redis what is missing rather than parse them.
                if await self._group_missing(role, exc):
                    log.warning("%s: stream or group gone (flushed?); recreating", role.label)
                    role.lose()
                    continue
                # Unreachable, or refusing the work (out of memory, read-only, no
                # permission; the groups script failed): nothing to skip, so wait and
                # try again, one log line per outage.
                if not backoff:
                    if not isinstance(exc, _UNREACHABLE):
                        log.error("%s: refused (%s); retrying", role.label, exc)
                    else:
                        log.warning("%s: redis unreachable (%s); retrying", role.label, exc)
                backoff = min(max(backoff * 2, _BACKOFF_MIN_S), _BACKOFF_MAX_S)
                role.lose()
                await self._pause(stop, backoff)

    def _holder(self, cell: str, role: str) -> str:
        return (self.assigned or {}).get((cell, role), "nobody yet")

    async def _admit(self, role: _Role, hot: bool = False) -> int:
        """Take one read of the cell's ingress streams (the rung ones, or with ``hot``
        the blocking read of the hot ones) and admit it; returns how many entries were
        taken. An entry the script fails on is dead-lettered as in ``_Role._apply``; the
        ones after it are in the log and apply from there."""
        applier = role.projection
        assert isinstance(applier, Applier)
        ingress = self.ingress[applier.keys.cell]
        taken = await (ingress.take_hot() if hot else ingress.take())
        try:
            calls = await applier.admit(taken, self.batch_size * FULL_COST)
        except EntryFailed as failed:
            found = await xrange_raw(self.client, applier.keys.log, text(failed.entry_id), 1)
            await role.set_aside(
                found[0] if found and found[0][0] == failed.entry_id else None, failed
            )
            ingress.missed()  # what followed it in its read: from the start of each stream
            return len(taken)
        role.count_dispatches(calls)
        return len(taken)

    async def _run_ingress(self, role: _Role, stop: anyio.Event) -> None:
        """While this worker holds the cell's dispatch role: admit what rang, and what
        the hot streams' blocking read brings."""
        ingress = self.ingress[role.projection.keys.cell]

        async def serve(hot: bool) -> None:
            backoff = 0.0
            while True:
                if not role.taken:
                    ingress.missed()  # whoever holds the role next reads everything first
                    await role.taken_event.wait()
                    continue
                try:
                    if not hot:
                        await ingress.wait()
                    await self._admit(role, hot)
                    backoff = 0.0
                except NotLeader:
                    role.lose()  # the role loop takes it again, or stands by
                except _REFUSED as exc:
                    if not backoff:  # one line per outage; the role loop handles the rest
                        log.warning("%s: ingress not read (%s); retrying", role.label, exc)
                    backoff = min(max(backoff * 2, _BACKOFF_MIN_S), _BACKOFF_MAX_S)
                    ingress.missed()
                    await anyio.sleep(backoff)

        async def both() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(serve, False)
                group.start_soon(serve, True)

        await _until(stop, both)

    async def _trim(self, keys: CellKeys) -> None:
        """Now and then (by the dispatch role's holder): checkpoint the projections,
        trim the log and the decisions stream below a checkpoint beyond the retention
        window, never below what a group still needs, and trim a slice of the nodes'
        inboxes below what each node acknowledged."""
        last = self._trimmed_at.get(keys.cell, 0.0)
        if time.monotonic() < last + _TRIM_EVERY_S or self.retain_ms is None:
            return
        self._trimmed_at[keys.cell] = time.monotonic()
        removed = await retain(self.client, keys, self.retain_ms)
        from_node = self._inboxes_from.get(keys.cell, 0)
        from_inboxes, self._inboxes_from[keys.cell] = await trim_inboxes(
            self.client, keys, from_node, _INBOXES_PER_TRIM
        )
        if removed or from_inboxes:
            log.info("%s: trimmed %d acknowledged entries", keys.cell, removed + from_inboxes)

    async def _follow(self, role: _Role, stop: anyio.Event) -> None:
        """Boundary logs and the statistics snapshot of a cell, written only by its
        dispatch role's holder."""
        keys = role.projection.keys
        builder = self.stats[keys.cell]

        checked_at = offered_at = float("-inf")

        async def publish_when_due() -> None:
            nonlocal checked_at, offered_at
            if time.monotonic() < checked_at + _STATS_CHECK_S:
                return
            checked_at = time.monotonic()
            now_ms = await applied_ms(self.client, keys) or 0
            if builder.due(now_ms):
                snapshot = await builder.publish(self.client, keys, now_ms)
                await publish_offer(self.client, keys, snapshot)
                offered_at = time.monotonic()
            elif time.monotonic() >= offered_at + builder.window_ms / 1000:
                # No window is ending (a cell with no decisions yet, or none of late):
                # the directory still hears what the cell offers, as often.
                await publish_offer(self.client, keys, await cell_shape(self.client, keys))
                offered_at = time.monotonic()

        async def follow() -> None:
            while not stop.is_set():
                # A standby reads nothing: only the holder follows (and returns to here
                # once it is no longer the holder).
                await role.taken_event.wait()
                try:
                    await follow_decisions(
                        self.client,
                        keys,
                        stop,
                        lambda: role.taken,
                        builder.decision,
                        publish_when_due,
                    )
                except (RedisError, OSError):
                    await self._pause(stop, _BACKOFF_MAX_S)  # the role loops log the outage

        await _until(stop, follow)

    async def _run_ticker(self, keys: CellKeys, stop: anyio.Event) -> None:
        lease = Lease(self.client, keys.lease("ticker"), self.name, self.lease_ms)
        label, ticking = f"{keys.cell}/ticker", False
        try:
            while not stop.is_set():
                try:
                    if not self.mine(keys.cell, "ticker"):
                        await lease.release()
                    elif await lease.keep():
                        await self.client.xadd(keys.log, {ENTRY_FIELD: _TICK})
                except _UNREACHABLE:
                    lease.held = False  # the role loops log the outage once
                if lease.held != ticking:
                    ticking = lease.held
                    log.info("%s: %s by %s", label, "taken" if ticking else "lost", self.name)
                await self._pause(stop, self.tick_ms / 1000)
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(RedisError, OSError):
                    await lease.release()  # unreachable: it expires by its TTL instead
