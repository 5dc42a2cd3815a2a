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

import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio
from redis.exceptions import RedisError, ResponseError

from eventsched.dispatch.applier import (
    FULL_COST,
    Applier,
    EntryFailed,
    GroupsApplier,
    NotLeader,
)
from eventsched.dispatch.ingress import Bells, Ingress
from eventsched.dispatch.job_log import follow_decisions
from eventsched.dispatch.lease import Lease
from eventsched.dispatch.retention import retain, trim_inboxes
from eventsched.dispatch.role import Role, ensure_group
from eventsched.dispatch.sharing import Membership, RoleId, assign
from eventsched.model.events import Tick
from eventsched.model.keys import PROJECTIONS, CellKeys
from eventsched.projections.directory import find_cells, publish_offer
from eventsched.projections.snapshot import applied_ms
from eventsched.projections.stats import StatsBuilder, cell_shape
from eventsched.store.append import decide_at_append
from eventsched.store.client import UNREACHABLE, RedisClient
from eventsched.store.streams import text, xrange_raw

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
_TRIM_EVERY_S = 5.0
# The worker command's retention window: ten minutes of log at 1,000 events/s is about
# 600,000 entries, some 150 MB, and enough to record what just went wrong.
DEFAULT_RETAIN_S = 600
_INBOXES_PER_TRIM = 256  # a round's slice of the nodes: 10,000 nodes in about 3 minutes
_STATS_CHECK_S = 0.25  # how often the follower asks whether a stats window has ended
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0
_SCAN_EVERY_S = 30.0  # --all-cells: the directory every beat, a SCAN for unlisted cells this often
_TICK = Tick()
# What a role loop waits out: Redis unreachable (a cluster failing over), or refusing.
_REFUSED: tuple[type[Exception], ...] = (*UNREACHABLE, ResponseError)
_REFUSED_OR_FAILED: tuple[type[Exception], ...] = (*_REFUSED, EntryFailed)


async def _until(stop: anyio.Event, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``task`` until ``stop``, then cancel it: for tasks that hold no batch in hand
    (following, listening, waiting for ingress), which end at once instead of waiting
    out a blocking read."""
    async with anyio.create_task_group() as group:
        group.start_soon(task)
        await stop.wait()
        group.cancel_scope.cancel()


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
        self._known: set[CellKeys] = set()  # self.cells, for a look-up per cell and beat
        self.roles: list[Role] = []
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
        if keys in self._known:
            return
        self._known.add(keys)
        kinds: dict[str, type[Applier] | type[GroupsApplier]] = {
            "dispatch": Applier,
            "groups": GroupsApplier,
        }
        self.cells.append(keys)
        roles = [
            Role(
                self.client,
                kinds[kind](self.client, keys, self.name),
                self.name,
                self.lease_ms,
                self.batch_size,
                self.block_ms,
                self.stats.setdefault(keys.cell, StatsBuilder()),
            )
            for kind in self.projections
        ]
        self.roles += roles
        self.ingress[keys.cell] = Ingress(self.client, keys)
        if "dispatch" in self.projections:
            self._bells.add(self.ingress[keys.cell])
        if self._running is not None:
            self._start(keys, roles, *self._running)

    def _start(
        self, keys: CellKeys, roles: Sequence[Role], group: anyio.abc.TaskGroup, stop: anyio.Event
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
        shared_by: tuple[int, list[str]] = (0, [])  # (cells, members) self.assigned is for
        while not stop.is_set():
            try:
                scan = time.monotonic() >= scanned_at + _SCAN_EVERY_S
                for keys in await find_cells(self.client, self.all_cells_of, scan=scan):
                    self.add_cell(keys)
                if scan:
                    scanned_at = time.monotonic()
                members = await membership.renew()
                if (len(self.cells), members) != shared_by:  # else the same assignment
                    roles = [(k.cell, role) for k in self.cells for role in self.role_names]
                    self.assigned, shared_by = assign(roles, members), (len(self.cells), members)
            except _REFUSED as exc:
                log.debug("worker %s: membership not renewed (%s)", self.name, exc)
            await self._pause(stop, self.lease_ms / 3000)

    async def _group_missing(self, role: Role, error: Exception) -> bool:
        """Whether a refusal was for a missing group or stream (never for a cluster
        failing over, or while Redis cannot be asked)."""
        if not isinstance(error, ResponseError) or isinstance(error, UNREACHABLE):
            return False
        try:
            return await role.group_missing()
        except _REFUSED:
            return False

    async def _pause(self, stop: anyio.Event, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await stop.wait()

    async def _run_role(self, role: Role, stop: anyio.Event) -> None:
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
                    if not isinstance(exc, UNREACHABLE):
                        log.error("%s: refused (%s); retrying", role.label, exc)
                    else:
                        log.warning("%s: redis unreachable (%s); retrying", role.label, exc)
                backoff = min(max(backoff * 2, _BACKOFF_MIN_S), _BACKOFF_MAX_S)
                role.lose()
                await self._pause(stop, backoff)

    def _holder(self, cell: str, role: str) -> str:
        return (self.assigned or {}).get((cell, role), "nobody yet")

    async def _admit(self, role: Role, hot: bool = False) -> int:
        """Take one read of the cell's ingress streams (the rung ones, or with ``hot``
        the blocking read of the hot ones) and admit it; returns how many entries were
        taken. An entry the script fails on is dead-lettered as in ``Role.apply``; the
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

    async def _run_ingress(self, role: Role, stop: anyio.Event) -> None:
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

    async def _follow(self, role: Role, stop: anyio.Event) -> None:
        """Boundary logs and the statistics snapshot of a cell, written only by its
        dispatch role's holder."""
        keys = role.projection.keys
        builder = self.stats[keys.cell]

        # The first offer waits a window like the rest: its scan of the cell's nodes and
        # sessions (a stats window's worth) must not land on a takeover's backlog.
        checked_at, offered_at = float("-inf"), time.monotonic()

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
                        await decide_at_append(self.client, keys, _TICK)
                except UNREACHABLE:
                    lease.held = False  # the role loops log the outage once
                if lease.held != ticking:
                    ticking = lease.held
                    log.info("%s: %s by %s", label, "taken" if ticking else "lost", self.name)
                await self._pause(stop, self.tick_ms / 1000)
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(RedisError, OSError):
                    await lease.release()  # unreachable: it expires by its TTL instead
