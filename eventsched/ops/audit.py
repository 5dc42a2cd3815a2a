"""What a run did, read back from the streams alone: the load generator's report, and
the invariants ``verify`` checks.

Nothing here trusts a counter kept by the code under test: every figure is recomputed
from the log (what was asked), the decisions stream (what the applier decided), the
node inboxes (what was handed off, and when) and the session outputs (what sessions
received).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from eventsched.model.events import NodeRegistered, UtteranceFinalized
from eventsched.model.keys import CellKeys
from eventsched.model.principals import lawful_event
from eventsched.store.client import RedisClient
from eventsched.store.streams import parse_id, read_stream

__all__ = ["RunReport", "combine", "in_place", "measure"]


def in_place(entry_id: str, utterance_index: int) -> bool:
    """Whether an output entry sits at its utterance's own place, ``(index+1)-0``, rather
    than after a later one (see groups.lua)."""
    return parse_id(entry_id) == (utterance_index + 1, 0)


@dataclass(frozen=True)
class RunReport:
    finalized: int
    resent: int
    dispatched: int
    retried: int
    nodes_lost: int
    completed: int
    rejected: int
    failed: int
    delivered: int
    lost: int
    duplicate_jobs: int
    max_overcommit: int
    out_of_order: int  # outputs at their own place whose index is not above the last's
    late: int  # outputs not at their own place: after a later one or a notice
    dead_lettered: int
    dispatch_p50_ms: float
    dispatch_p99_ms: float

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


def combine(reports: Sequence[RunReport]) -> RunReport:
    """One report of a run over several cells: counts add up, ``max_overcommit`` and
    the dispatch percentiles are the worst cell's."""
    worst = {"max_overcommit", "dispatch_p50_ms", "dispatch_p99_ms"}
    rows = [report.as_dict() for report in reports]
    combined = {
        name: (max if name in worst else sum)(row[name] for row in rows) for name in rows[0]
    }
    return RunReport(**combined)  # type: ignore[arg-type]


def _names_any(raw_event: str, names: set[str]) -> bool:
    """Whether a dead-lettered event's JSON names one of these sessions or nodes."""
    try:
        fields = json.loads(raw_event)
    except (ValueError, RecursionError):  # whatever a producer wrote
        return False
    if not isinstance(fields, dict):
        return False
    owner = fields.get("session_id") or fields.get("node_id") or ""
    return isinstance(owner, str) and owner in names


def _percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return float(sorted_values[rank])


async def measure(
    client: RedisClient,
    keys: CellKeys,
    session_ids: Iterable[str],
    node_ids: Iterable[str],
) -> RunReport:
    """The report of a run, limited to its own sessions and nodes."""
    sessions, nodes = set(session_ids), set(node_ids)

    finalize_ms: dict[tuple[str, int], int] = {}
    resent = 0  # finalizes in the log more than once: a gateway sent them again
    # Each registration's limit holds from its log position on: a dispatch is checked
    # against the limit in force when it was decided, not the node's last one.
    registrations: list[tuple[tuple[int, int], str, int]] = []
    async for entry_id, fields in read_stream(client, keys.log):
        event = lawful_event(fields)
        if isinstance(event, UtteranceFinalized) and event.session_id in sessions:
            key = (event.session_id, event.utterance_index)
            resent += key in finalize_ms
            finalize_ms.setdefault(key, parse_id(entry_id)[0])
        elif isinstance(event, NodeRegistered) and event.node_id in nodes:
            registrations.append((parse_id(entry_id), event.node_id, event.max_concurrency))

    dispatched = retried = completed = 0
    live_attempts: dict[str, int] = defaultdict(int)
    running: dict[str, int] = defaultdict(int)
    duplicate_jobs: set[str] = set()
    max_overcommit = 0
    nodes_lost = 0
    capacity: dict[str, int] = {}
    in_force = 0  # registrations[:in_force] are at or before the decision at hand
    async for _, fields in read_stream(client, keys.decisions):
        at = parse_id(fields.get("at", "0-0"))
        while in_force < len(registrations) and registrations[in_force][0] <= at:
            _, node_id, limit = registrations[in_force]
            capacity[node_id] = limit
            in_force += 1
        if fields["k"] == "l":
            nodes_lost += fields["node"] in nodes
            continue
        job = fields.get("job", "")
        if job.rpartition(":")[0] not in sessions:
            continue
        kind, node = fields["k"], fields.get("node", "")
        if kind == "d":
            if fields["att"] == "1":
                dispatched += 1
            else:
                retried += 1
            live_attempts[job] += 1
            if live_attempts[job] > 1:
                duplicate_jobs.add(job)
            running[node] += 1
            max_overcommit = max(max_overcommit, running[node] - capacity.get(node, 0))
        elif kind == "r":
            live_attempts[job] -= 1
            running[node] -= 1
            completed += fields["ok"] == "1"

    latencies: list[int] = []
    for node in sorted(nodes):
        async for entry_id, fields in read_stream(client, keys.inbox(node)):
            key = (fields["sid"], int(fields["idx"]))
            if fields["att"] == "1" and key in finalize_ms:
                latencies.append(parse_id(entry_id)[0] - finalize_ms[key])
    latencies.sort()

    delivered = rejected = failed = out_of_order = late = 0
    for session in sorted(sessions):
        previous = -1
        async for entry_id, fields in read_stream(client, keys.output(session)):
            if fields["st"] == "notice":
                continue
            delivered += 1
            index = int(fields["idx"])
            if in_place(entry_id, index):
                out_of_order += index <= previous
                previous = index
            else:
                late += 1
            rejected += fields["st"] == "rejected"
            failed += fields["st"] == "failed"

    dead = 0
    async for _, fields in read_stream(client, keys.dlq):
        dead += _names_any(fields.get("f:e", ""), sessions | nodes)

    finalized = len(finalize_ms)
    return RunReport(
        finalized=finalized,
        resent=resent,
        dispatched=dispatched,
        retried=retried,
        nodes_lost=nodes_lost,
        completed=completed,
        rejected=rejected,
        failed=failed,
        delivered=delivered,
        lost=finalized - delivered,
        duplicate_jobs=len(duplicate_jobs),
        max_overcommit=max_overcommit,
        out_of_order=out_of_order,
        late=late,
        dead_lettered=dead,
        dispatch_p50_ms=_percentile(latencies, 0.50),
        dispatch_p99_ms=_percentile(latencies, 0.99),
    )
