"""Apply a batch of log entries: validate in Python, then one FCALL of apply.lua.

Python turns each entry into the flat fields apply.lua reads (model.entries); an
entry that does not keep model.limits or does not validate becomes a ``bad`` entry,
which the script dead-letters with its reason and a bounded copy of its fields in the
same call that applies the rest of the batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import anyio.lowlevel

from eventsched.dispatch.job_log import log_delivered
from eventsched.model.entries import (
    APPLY_DEFAULTS,
    MAX_REASON,
    Arg,
    admitted_args,
    admitted_fields,
    as_fields,
    bounded_copy,
    entry_args,
    fields_args,
    script_entry,
)
from eventsched.model.keys import APPLIER_GROUP, GROUPS_GROUP, CellKeys
from eventsched.model.settings import DEFAULTS
from eventsched.store.client import RedisClient
from eventsched.store.scripts import callable_code
from eventsched.store.streams import text

__all__ = [
    "APPLIER_GROUP",
    "ENTRY_COST",
    "FULL_COST",
    "GROUPS_GROUP",
    "Applier",
    "BatchResult",
    "Entry",
    "EntryFailed",
    "GroupsApplier",
    "NotLeader",
    "OutOfOrder",
    "Prepared",
    "Projection",
    "Taken",
    "retrieved",
]


Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass(frozen=True)
class BatchResult:
    applied: int
    skipped: int
    dead_lettered: int


class NotLeader(Exception):
    """The worker no longer holds the role's lease; the batch was refused, not applied."""


class OutOfOrder(Exception):
    """A batch sent ahead was refused: the batch before it did not apply."""


class EntryFailed(Exception):
    """The script raised on one entry: the entries before it applied, it and those
    after it did not (common.lua's run_batch)."""

    def __init__(self, entry_id: bytes, error: str) -> None:
        super().__init__(f"{entry_id.decode()}: {error}")
        self.entry_id = entry_id
        self.error = error


# What an entry costs the script, in quarters of a finalize decision (Redis time,
# bench/dispatch_scale.py: a finalize about 45 us, a result 27, a heartbeat 11). Calls
# are cut by cost, so one holds Redis about as long whatever it carries.
ENTRY_COST = {"hb": 1, "res": 3}
FULL_COST = 4
# Calls in flight at once: building one's arguments takes about as long as Redis takes
# to run one, so with two Redis often had nothing queued while the next was built.
_IN_FLIGHT = 3


@dataclass
class Prepared:
    """One call's worth of entries as the script's arguments."""

    args: list[Arg]
    count: int
    finalize_ms: list[int]  # append times of its finalizes (dispatch statistics)
    applied_wall_ms: int = 0  # set once the call returned


class _ScriptProjection:
    """A projection folded by one Lua script over one stream, under one lease: what the
    worker needs of it (role, stream, group, lease) and the calls themselves, refused
    with NotLeader when this holder lost the lease."""

    role: str
    script: str
    group: str

    def __init__(self, client: RedisClient, keys: CellKeys, holder: str = "worker-1") -> None:
        self.keys = keys
        self.stream = self.stream_of(keys)
        self.lease_key = keys.lease(self.role)
        self._script = callable_code(client, self.script)
        self._script_keys = keys.script_keys(self.script)
        self._head: list[Arg] = [keys.prefix, self.group, holder, *self.default_args()]

    def stream_of(self, keys: CellKeys) -> str:
        raise NotImplementedError

    def default_args(self) -> list[Arg]:
        """The defaults of the settings the script reads: the cell's own come from the
        log (settings_changed), never from the worker."""
        raise NotImplementedError

    def entry_args(self, entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, list[Arg]]:
        """The entry's kind (which prices it) and its arguments."""
        raise NotImplementedError

    def result(self, reply: list[Any]) -> BatchResult:
        raise NotImplementedError

    def prepare(
        self,
        entries: Sequence[Entry],
        start: int = 0,
        budget: int | None = None,
        after: bytes = b"",
    ) -> Prepared:
        """The arguments for ``entries[start:]``: all of them, or as many as ``budget``
        (in quarters of a finalize) pays for, one at least. With ``after``, the script
        refuses the call unless the marker has reached that ID."""
        body: list[Arg] = []
        finalize_ms: list[int] = []
        spent, position = 0, start
        while position < len(entries) and (budget is None or spent < budget):
            entry_id, fields = entries[position]
            kind, values = self.entry_args(entry_id, fields)
            spent += ENTRY_COST.get(kind, FULL_COST)
            if kind == "fin":
                finalize_ms.append(int(entry_id.split(b"-", 1)[0]))
            body += values
            position += 1
        count = position - start
        return Prepared(self._call_args(after, count, body), count, finalize_ms)

    def _call_args(self, after: bytes, count: int, body: list[Arg]) -> list[Arg]:
        """The script's ARGV: the head (settings' defaults included), then the entries."""
        return [*self._head, after, count, *body]

    async def run(self, prepared: Prepared) -> list[Any]:
        reply = await self._script(keys=self._script_keys, args=prepared.args)
        if int(reply[0]) == -1:
            raise NotLeader(self.lease_key)
        if int(reply[0]) == -2:
            raise OutOfOrder(self.stream)
        if int(reply[0]) == -3:
            raise EntryFailed(reply[1], text(reply[2]))
        return cast(list[Any], reply)

    async def apply(self, entries: Sequence[Entry]) -> BatchResult:
        """Apply ``entries`` in one call."""
        if not entries:
            return BatchResult(0, 0, 0)
        return self.result(await self.run(self.prepare(entries)))

    async def apply_in_calls(self, entries: Sequence[Entry], budget: int) -> list[Prepared]:
        """Apply ``entries`` in order, in calls of ``budget`` each (see ``prepare``);
        returns the calls. Three calls are in flight at once (``_IN_FLIGHT``): Redis runs
        one while the others wait behind it, and the one after them is prepared here
        meanwhile, so neither side waits for the other. Each call after the first is
        refused unless the one before it applied (``after``), so a failure cannot leave
        a gap."""
        calls: list[Prepared] = []
        in_flight: deque[tuple[Prepared, asyncio.Future[list[Any]]]] = deque()
        position, after = 0, b""
        try:
            while position < len(entries) or in_flight:
                if position < len(entries) and len(in_flight) < _IN_FLIGHT:
                    prepared = self.prepare(entries, position, budget, after)
                    position += prepared.count
                    after = entries[position - 1][0]
                    if not in_flight and position == len(entries):
                        # The one call left, none ahead of it: nothing to overlap.
                        self._returned(prepared, await self.run(prepared), calls)
                        break
                    sent = asyncio.ensure_future(self.run(prepared))
                    sent.add_done_callback(retrieved)
                    in_flight.append((prepared, sent))
                    await anyio.lowlevel.checkpoint()  # the call goes out now
                    continue
                prepared, oldest = in_flight.popleft()
                try:
                    reply = await oldest
                except OutOfOrder:
                    # The calls travel on connections of their own and may reach
                    # Redis out of order; this one went ahead of one before it, was
                    # refused, and goes again now that those ahead have applied.
                    reply = await self.run(prepared)
                self._returned(prepared, reply, calls)
        finally:
            for _, behind in in_flight:  # after a failure: refused by Redis in any case
                behind.cancel()
        return calls

    def _returned(self, prepared: Prepared, reply: list[Any], calls: list[Prepared]) -> None:
        self.result(reply)
        prepared.applied_wall_ms = int(time.time() * 1000)
        calls.append(prepared)


def retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a task's outcome seen: a call or read that was let go after the one before
    it failed fails too, and asyncio would log that nobody looked."""
    if not task.cancelled():
        task.exception()


# An entry taken from an ingress stream: its source (node:n1), ingress ID and fields.
Taken = tuple[str, bytes, dict[bytes, bytes]]


class Applier(_ScriptProjection):
    """The dispatch projection: applies batches of one cell's log with apply.lua, and
    admits entries from principals' ingress streams to the log (see ``admit``)."""

    role = "dispatch"
    script = "apply"
    group = APPLIER_GROUP

    def _call_args(self, after: bytes, count: int, body: list[Arg]) -> list[Arg]:
        return [*self._head, "log", after, count, *body]

    def prepare_ingress(
        self, taken: Sequence[Taken], start: int = 0, budget: int | None = None
    ) -> Prepared:
        """The arguments admitting ``taken[start:]`` (as many as ``budget`` pays for, see
        ``prepare``): per entry what the log gets, then its kind and fields, worked out
        from those log fields as a read of the log would (``fields_args``), so applying
        it now or from the log is the same."""
        body: list[Arg] = []
        finalize_ms: list[int] = []
        spent, position = 0, start
        while position < len(taken) and (budget is None or spent < budget):
            source, ingress_id, fields = taken[position]
            log_fields = admitted_fields(source, fields)
            kind, values = fields_args(as_fields(log_fields))
            spent += ENTRY_COST.get(kind, FULL_COST)
            if kind == "fin":  # for dispatch statistics: when the gateway appended it
                finalize_ms.append(int(ingress_id.split(b"-", 1)[0]))
            body += admitted_args(source, log_fields, ingress_id, kind, values)
            position += 1
        count = position - start
        return Prepared([*self._head, "ingress", b"", count, *body], count, finalize_ms)

    async def admit(self, taken: Sequence[Taken], budget: int) -> list[Prepared]:
        """Admit entries taken from ingress streams, in calls of ``budget`` each: each
        entry once, appended to the log and applied there (apply.lua's run_ingress).
        Raises EntryFailed as ``apply`` does, with the failed entry's log ID."""
        calls: list[Prepared] = []
        position = 0
        while position < len(taken):
            prepared = self.prepare_ingress(taken, position, budget)
            position += prepared.count
            self._returned(prepared, await self.run(prepared), calls)
        return calls

    def stream_of(self, keys: CellKeys) -> str:
        return keys.log

    def default_args(self) -> list[Arg]:
        return list(APPLY_DEFAULTS)

    def entry_args(self, entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, list[Arg]]:
        kind, values = entry_args(entry_id, fields)
        return kind, script_entry(entry_id, kind, values)

    def result(self, reply: list[Any]) -> BatchResult:
        applied, skipped, dead = (int(x) for x in reply[:3])
        return BatchResult(applied, skipped, dead)

    async def dead_letter(self, entry: Entry, reason: str) -> None:
        """Dead-letter one entry as it stands, past the marker and acknowledged, in
        place of applying it: for an entry the script fails on."""
        entry_id, fields = entry
        body = script_entry(entry_id, "bad", [reason[:MAX_REASON], *bounded_copy(fields)])
        self.result(await self.run(Prepared(self._call_args(b"", 1, body), 1, [])))


class GroupsApplier(_ScriptProjection):
    """The group-state projection: folds the decisions stream with groups.lua."""

    role = "groups"
    script = "groups"
    group = GROUPS_GROUP

    def stream_of(self, keys: CellKeys) -> str:
        return keys.decisions

    def default_args(self) -> list[Arg]:
        return [DEFAULTS.group_max_utterances]

    def entry_args(self, entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, list[Arg]]:
        flat = [part for item in fields.items() for part in item]
        return "decision", [entry_id, len(flat), *flat]

    def result(self, reply: list[Any]) -> BatchResult:
        flat = reply[2]
        delivered = [(text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        log_delivered(self.keys.cell, delivered)
        return BatchResult(int(reply[0]), int(reply[1]), 0)


Projection = Applier | GroupsApplier
