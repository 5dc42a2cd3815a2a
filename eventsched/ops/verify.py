"""Verify a live cell: rebuild every projection from its log in memory, with the same
scripts and settings, compare it with the live projections, and check the invariants
from the streams.

The live state is read at one consistent point of the log (``cell_state.read_state``).

What verify cannot see: writes that are gone from every stream. When Redis loses
acknowledged writes (a crash under ``appendfsync everysec``, a failover to a replica
that had not caught up, a FLUSHALL), it loses the log entries, decisions and outputs
together, and what is left is a consistent, shorter cell that verifies. Only a client
knows what it was told: count loss on the gateway side (the load generator's report
does, and ``SessionClient`` sends again what got no outcome).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

from eventsched.dispatch.applier import APPLIER_GROUP, GROUPS_GROUP
from eventsched.dispatch.retention import deleted_below
from eventsched.dispatch.worker import Worker, ensure_group
from eventsched.model.events import NodeRegistered, SessionOpened
from eventsched.model.keys import CellKeys
from eventsched.model.limits import OUTPUT_MAX_LEN, field_pairs
from eventsched.model.principals import lawful_event
from eventsched.ops.audit import in_place, measure
from eventsched.projections.cell_state import read_state, restore_state
from eventsched.store.append import append_exact
from eventsched.store.client import RedisClient, Store
from eventsched.store.streams import id_after, read_stream, text, xrange_raw

__all__ = ["VerifyReport", "rebuild_in_memory", "start_groups", "verify_cell"]

_COPY_PAGE = 1000


@dataclass
class VerifyReport:
    log_entries: int = 0
    problems: list[str] = field(default_factory=list)
    figures: dict[str, int | float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


async def start_groups(client: RedisClient, keys: CellKeys) -> None:
    """Consumer groups of a store about to apply: the log from its start; the decisions
    after the ones a restored snapshot has folded already."""
    await ensure_group(client, keys.log, APPLIER_GROUP)
    folded = await client.hget(keys.meta, "groups_applied")
    if folded is not None:
        await ensure_group(client, keys.decisions, GROUPS_GROUP)
        await client.xgroup_setid(keys.decisions, GROUPS_GROUP, text(folded))


async def rebuild_in_memory(
    live: RedisClient,
    keys: CellKeys,
    up_to: str,
    worker_name: str,
    snapshot: list[dict[str, Any]] | None = None,
    after: str | None = None,
) -> tuple[dict[str, Any], int]:
    """Replay the live log's entries in (``after``, ``up_to``] into a fresh embedded
    store that starts from ``snapshot`` (restore items; none: an empty cell): settings
    included, as the log changed them. Returns the state and the entries copied."""
    scratch = Store().client()
    copied = 0
    cursor = f"({after}" if after is not None else "-"
    try:
        await restore_state(scratch, keys, snapshot or [])
        while True:
            page = await xrange_raw(live, keys.log, cursor, _COPY_PAGE)
            page = [(i, f) for i, f in page if not id_after(text(i), up_to)]
            if page:
                async with scratch.pipeline(transaction=False) as pipe:
                    for entry_id, fields in page:  # as they are, repeated names too
                        append_exact(pipe, keys.log, entry_id, field_pairs(fields))
                    await pipe.execute()
                copied += len(page)
            if len(page) < _COPY_PAGE:
                break
            cursor = "(" + text(page[-1][0])
        await start_groups(scratch, keys)
        await Worker(scratch, [keys], name=worker_name).drain()
        return await read_state(scratch, keys), copied
    finally:
        await scratch.aclose()


def _compare(live: dict[str, Any], rebuilt: dict[str, Any], limit: int = 10) -> list[str]:
    problems = []
    for name in sorted(set(live) | set(rebuilt)):
        if name == "_applied" or name == "meta":
            continue
        if name not in rebuilt:
            problems.append(f"{name}: live only")
        elif name not in live:
            problems.append(f"{name}: missing live (the rebuild has it)")
        elif name.startswith("inbox:") and _trimmed_from(live[name], rebuilt[name]):
            continue  # retention trimmed what the node acknowledged: the rest is the same
        elif live[name] != rebuilt[name]:
            problems.append(f"{name}: differs from the rebuild")
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more"]
    return problems


def _trimmed_from(live: list[Any], rebuilt: list[Any]) -> bool:
    """Whether ``live`` is ``rebuilt`` less some entries at the front."""
    return len(live) <= len(rebuilt) and live == rebuilt[len(rebuilt) - len(live) :]


async def _participants(client: RedisClient, keys: CellKeys) -> tuple[list[str], list[str]]:
    sessions, nodes = set(), set()
    async for _, fields in read_stream(client, keys.log):
        event = lawful_event(fields)
        if isinstance(event, SessionOpened):
            sessions.add(event.session_id)
        elif isinstance(event, NodeRegistered):
            nodes.add(event.node_id)
    return sorted(sessions), sorted(nodes)


def _ended_once_in_order(state: dict[str, Any]) -> list[str]:
    """Every finalize the dispatch accepted is delivered exactly once, or is still in
    flight, and those at their own place are in order; nothing is delivered that was not
    accepted. Notices are not outcomes."""
    accepted: dict[str, set[int]] = defaultdict(set)
    for _, fields in state.get("decisions", []):
        kind = fields[b"k"]
        if kind == b"x" or (kind in (b"d", b"w") and fields[b"att"] == b"1"):
            accepted[text(fields[b"sid"])].add(int(fields[b"idx"]))
        elif kind == b"e":  # the session expired, its outputs with it
            accepted.pop(text(fields[b"sid"]), None)
    problems = []
    for session, indexes in sorted(accepted.items()):
        outputs = [
            (text(entry_id), int(f[b"idx"]))
            for entry_id, f in state.get(f"out:{session}", [])
            if f[b"st"] != b"notice"
        ]
        if len(state.get(f"out:{session}", [])) >= OUTPUT_MAX_LEN and outputs:
            # The stream keeps its newest entries: what came before them is not here.
            oldest = min(index for _, index in outputs)
            indexes = {index for index in indexes if index >= oldest}
        delivered = [index for _, index in outputs]
        placed = [index for entry_id, index in outputs if in_place(entry_id, index)]
        in_flight = {int(m) for m, _ in cast(list[Any], state.get(f"infl:{session}", []))}
        if len(delivered) != len(set(delivered)) or placed != sorted(placed):
            problems.append(f"session {session}: outputs repeat or are out of order")
        if set(delivered) & in_flight:
            problems.append(f"session {session}: delivered and still in flight")
        if set(delivered) | in_flight != indexes:
            problems.append(f"session {session}: an accepted finalize never ended")
    return problems


async def verify_cell(client: RedisClient, keys: CellKeys) -> VerifyReport:
    report = VerifyReport()
    if await deleted_below(client, keys, keys.log) is not None:
        report.problems.append(
            "the log was trimmed or had entries deleted: it cannot be rebuilt from the start"
        )
        return report
    live = await read_state(client, keys)
    rebuilt, report.log_entries = await rebuild_in_memory(client, keys, live["_applied"], "verify")
    report.problems += _compare(live, rebuilt)
    report.problems += _ended_once_in_order(live)
    sessions, nodes = await _participants(client, keys)
    run = await measure(client, keys, sessions, nodes)
    report.figures = {
        "sessions": len(sessions),
        "nodes": len(nodes),
        "finalized": run.finalized,
        "delivered": run.delivered,
        "duplicate_jobs": run.duplicate_jobs,
        "max_overcommit": run.max_overcommit,
        "out_of_order": run.out_of_order,
        "dead_lettered": run.dead_lettered,
    }
    if run.duplicate_jobs:
        report.problems.append(f"{run.duplicate_jobs} utterances had two live jobs at once")
    if run.max_overcommit > 0:
        report.problems.append(f"a node ran {run.max_overcommit} jobs above its capacity")
    if run.out_of_order:
        report.problems.append(f"{run.out_of_order} session outputs out of order")
    return report
