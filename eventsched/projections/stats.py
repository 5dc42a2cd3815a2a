"""The statistics projection (the seeds' /api/v1/stats): built by the worker that holds
a cell's dispatch role, from the decisions it follows and the batches it applies, as a
snapshot per 5 s window of event time, stored in the cell's ``stats`` hash. ``eventsched
stats`` and ``eventsched top`` read that snapshot; nothing scans projections on request.

Latencies: *end to end* is event time from a finalize to its result (the `o` decision's
`at` minus the job's finalize); *dispatch* is the wall time from a finalize's append
(its log ID) to the apply call that decided it returning, which includes the hand-off to
the node's inbox; *wait* is the event time a job waited in its pair's queue for a slot
(the `d` decision's `waited`). The snapshot depends on wall time, so it is not part of
replay.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, cast

from eventsched.model.entries import node_pairs
from eventsched.model.keys import ROLES, SUFFIXES, CellKeys
from eventsched.store.client import RedisClient
from eventsched.store.scripts import register
from eventsched.store.streams import parse_id, text

__all__ = [
    "AT_APPEND",
    "BUCKETS_MS",
    "COUNTS",
    "LATENCIES",
    "REASONS",
    "STALE_WINDOWS",
    "WINDOW_MS",
    "StatsBuilder",
    "age_of",
    "cell_shape",
    "read_published",
    "read_stats",
]

WINDOW_MS = 5000
STALE_WINDOWS = 3  # a snapshot older than this many windows is stale: no worker publishes
HISTORY_WINDOWS = 60  # the snapshot carries this many windows' key figures (5 minutes)
_HISTORY_FIGURES = ("dispatch_rate_per_s", "dispatch_p99_ms", "e2e_p99_ms", "wait_p99_ms")
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
# What a snapshot counts, every one present even at 0, and why a finalize got no job,
# a job failed or a finalize was noticed (others a newer script makes are added).
COUNTS = (
    "dispatched",
    "retried",
    "queued",
    "completed",
    "model_not_available",
    "nodes_lost",
    "unavailable_windows",
    "quarantines",
)
_ENDED = ("no_pool", "no_capacity", "queue_full", "queue_timeout", "session_closed")
REASONS = {
    "rejected": ("rate_limited", *_ENDED),
    "failed": (*_ENDED, "retries_exhausted", "timed_out", "node_lost", "node_left"),
    "noticed": ("unknown_session", "session_closed"),
}
LATENCIES = ("dispatch", "e2e", "wait")  # histograms, in BUCKETS_MS
AT_APPEND = "fin_at_append"  # finalizes apply.lua decided at their append, not yet published
_TOTAL = "total:"  # the stats hash's cumulative fields: total:<count>, total:<kind>:<reason>,
# total:<latency>:<bucket index>, total:<latency>:sum_ms (for /metrics)


def _bucket(value_ms: int) -> int:
    for index, bound in enumerate(BUCKETS_MS):
        if value_ms <= bound:
            return index
    return len(BUCKETS_MS)


def _percentile(histogram: list[int], fraction: float) -> int | None:
    """The upper bound (ms) of the bucket holding the percentile; None when empty."""
    total = sum(histogram)
    if not total:
        return None
    rank, seen = fraction * total, 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return BUCKETS_MS[index] if index < len(BUCKETS_MS) else BUCKETS_MS[-1] * 10
    return None


class StatsBuilder:
    def __init__(self, window_ms: int = WINDOW_MS) -> None:
        self.window_ms = window_ms
        self.window_start: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.counts: Counter[str] = Counter()
        self.e2e = _histogram()
        self.dispatch = _histogram()
        self.waits: dict[str, list[int]] = {}  # pair -> waits of the jobs it placed
        self.sums_ms: Counter[str] = Counter()  # latency -> the window's total ms

    def decision(self, fields: dict[str, str]) -> None:
        kind = fields.get("k", "")
        at_ms = parse_id(fields.get("at", "0-0"))[0]
        if self.window_start is None:
            self.window_start = at_ms - at_ms % self.window_ms
        if kind == "d":
            self.counts["dispatched" if fields.get("att") == "1" else "retried"] += 1
            if "waited" in fields:
                pair, waited = fields.get("pair", ""), int(fields["waited"])
                self.waits.setdefault(pair, _histogram())[_bucket(waited)] += 1
                self.sums_ms["wait"] += waited
        elif kind == "w":
            self.counts["queued"] += 1
        elif kind == "x":
            self.counts[f"rejected:{fields.get('reason', '')}"] += 1
        elif kind == "f":
            self.counts[f"failed:{fields.get('reason', '')}"] += 1
        elif kind == "o":
            self.counts["completed"] += 1
            if fields.get("fin"):
                took_ms = at_ms - parse_id(fields["fin"])[0]
                self.e2e[_bucket(took_ms)] += 1
                self.sums_ms["e2e"] += took_ms
        elif kind == "r" and fields.get("err") == "MODEL_NOT_AVAILABLE":
            self.counts["model_not_available"] += 1
        elif kind == "l":
            self.counts["nodes_lost"] += 1
        elif kind == "m":
            self.counts["unavailable_windows"] += 1
        elif kind == "q":
            self.counts["quarantines"] += 1
        elif kind == "n":
            self.counts[f"noticed:{fields.get('reason', '')}"] += 1

    def dispatched_after(self, finalize_ms: list[int], now_wall_ms: int) -> None:
        for appended_ms in finalize_ms:
            took_ms = max(0, now_wall_ms - appended_ms)
            self.dispatch[_bucket(took_ms)] += 1
            self.sums_ms["dispatch"] += took_ms

    def _by_reason(self, kind: str) -> dict[str, int]:
        head = kind + ":"
        found = {k[len(head) :]: n for k, n in self.counts.items() if k.startswith(head)}
        return {**dict.fromkeys(REASONS[kind], 0), **found}

    def due(self, now_ms: int) -> bool:
        return self.window_start is not None and now_ms >= self.window_start + self.window_ms

    async def publish(self, client: RedisClient, keys: CellKeys, now_ms: int) -> dict[str, Any]:
        """Write the window's snapshot with the cell's current shape; start a new window.
        Finalizes decided in their own append's call (store.append.decide_at_append)
        waited for no worker: taken from the script's count into the first bucket."""
        at_append = int(await client.hget(keys.stats, AT_APPEND) or 0)
        if at_append:
            await client.hincrby(keys.stats, AT_APPEND, -at_append)  # what came since stays
            self.dispatch[0] += at_append
        start = self.window_start if self.window_start is not None else now_ms
        seconds = self.window_ms / 1000
        rejected, failed, noticed = (
            self._by_reason(kind) for kind in ("rejected", "failed", "noticed")
        )
        waits = _waits(self.waits)
        plain = {
            **dict.fromkeys(COUNTS, 0),
            **{k: n for k, n in self.counts.items() if ":" not in k},
        }
        snapshot: dict[str, Any] = {
            "window_start_ms": start,
            "window_ms": self.window_ms,
            "published_wall_ms": int(time.time() * 1000),
            "counts": plain,
            "rejected": rejected,
            "failed": failed,
            "noticed": noticed,
            "dispatch_rate_per_s": round(plain.get("dispatched", 0) / seconds, 2),
            "e2e_p50_ms": _percentile(self.e2e, 0.5),
            "e2e_p99_ms": _percentile(self.e2e, 0.99),
            "dispatch_p50_ms": _percentile(self.dispatch, 0.5),
            "dispatch_p99_ms": _percentile(self.dispatch, 0.99),
            "histogram_bounds_ms": list(BUCKETS_MS),
            "e2e_histogram": self.e2e,
            "dispatch_histogram": self.dispatch,
            **waits,
            "queues": await _queues(client, keys, self.waits),
            **await cell_shape(client, keys),
        }
        snapshot["history"] = await _history(client, keys, snapshot)
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(keys.stats, "snapshot", json.dumps(snapshot, sort_keys=True))
            for name, count in self.counts.items():
                if count:
                    pipe.hincrby(keys.stats, _TOTAL + name, count)
            histograms = zip(
                LATENCIES, (self.dispatch, self.e2e, waits["wait_histogram"]), strict=True
            )
            for latency, histogram in histograms:
                for index, count in enumerate(histogram):
                    if count:
                        pipe.hincrby(keys.stats, f"{_TOTAL}{latency}:{index}", count)
                if self.sums_ms[latency]:
                    pipe.hincrby(keys.stats, f"{_TOTAL}{latency}:sum_ms", self.sums_ms[latency])
            await pipe.execute()
        self.window_start = now_ms - now_ms % self.window_ms
        self._reset()
        return snapshot


async def _history(
    client: RedisClient, keys: CellKeys, snapshot: dict[str, Any]
) -> list[dict[str, Any]]:
    """The last HISTORY_WINDOWS windows' key figures, this one last, so that a dashboard
    draws the last minutes at once (one publisher per cell: the dispatch role's)."""
    before = await read_stats(client, keys)
    history = list(before.get("history", []))[-(HISTORY_WINDOWS - 1) :] if before else []
    point = {name: snapshot.get(name) for name in ("window_start_ms", *_HISTORY_FIGURES)}
    point["waiting"] = sum(queue["waiting"] for queue in snapshot["queues"].values())
    return [*history, point]


def _histogram() -> list[int]:
    return [0] * (len(BUCKETS_MS) + 1)


def _waits(by_pair: dict[str, list[int]]) -> dict[str, Any]:
    """The waits of the window's dispatches from a queue, all pairs together."""
    together = [sum(counts) for counts in zip(_histogram(), *by_pair.values(), strict=True)]
    return {
        "wait_p50_ms": _percentile(together, 0.5),
        "wait_p99_ms": _percentile(together, 0.99),
        "wait_histogram": together,
    }


async def _queues(
    client: RedisClient, keys: CellKeys, waits: dict[str, list[int]]
) -> dict[str, dict[str, Any]]:
    """Per language pair that has jobs waiting now or placed some from its queue in the
    window: how many wait, and the window's wait percentiles."""
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.queued))
    waiting = {text(pair): int(count) for pair, count in raw.items()}
    return {
        pair: {
            "waiting": waiting.get(pair, 0),
            "wait_p50_ms": _percentile(waits.get(pair, _histogram()), 0.5),
            "wait_p99_ms": _percentile(waits.get(pair, _histogram()), 0.99),
        }
        for pair in sorted(waiting.keys() | waits.keys())
    }


_RECORDS_PAGE = 256  # records a records.lua call reads: under a millisecond of Redis


async def _records(
    client: RedisClient, keys: CellKeys, kind: str, fields: list[str]
) -> list[list[str]]:
    """``fields`` of every record of ``kind`` (a SUFFIXES name: ``node`` or ``session``),
    '' for a missing one, a page per call (lua/records.lua). Between pages the cell goes
    on: as with any SCAN, a record made or removed meanwhile may be read twice or not at
    all, which a window's picture can bear."""
    read = register(client, "records")
    records: list[list[str]] = []
    start = "0"
    while True:
        reply = cast(
            list[bytes],
            await read(
                keys=keys.script_keys("records"),
                args=[keys.prefix, SUFFIXES[kind], start, _RECORDS_PAGE, *fields],
            ),
        )
        values = [text(value) for value in reply[1:]]
        records += [values[i : i + len(fields)] for i in range(0, len(values), len(fields))]
        start = text(reply[0])
        if start == "0":
            return records


async def cell_shape(client: RedisClient, keys: CellKeys) -> dict[str, Any]:
    """Nodes by state, pools (members, slots, utilization), the service catalog (the
    language pairs and languages registered nodes serve, and the slots of the nodes up
    serving each pair), open sessions and the pairs
    they speak, who holds which role, and consumer lag. Built here, once a window, so
    that readers never scan."""
    fields = ["st", "inpool", "pools", "run", "mc", "pairs", "langs"]
    nodes: Counter[str] = Counter()
    pools: dict[str, dict[str, int]] = {}
    catalog: dict[str, Counter[str]] = {"pairs": Counter(), "languages": Counter()}
    pair_slots: Counter[str] = Counter()  # slots of up nodes serving each pair
    # Most nodes list the same pairs and languages: each listing is split once, for all
    # the nodes (not gone) that have it and for the slots of those up.
    listed: Counter[tuple[str, str]] = Counter()
    listed_slots: Counter[str] = Counter()
    for record in await _records(client, keys, "node", fields):
        st, inpool, member_of, running, capacity, pairs, langs = record
        nodes["ready" if st == "up" and inpool == "1" else "overloaded" if st == "up" else st] += 1
        for pool in filter(None, member_of.split(",")):
            entry = pools.setdefault(pool, {"members": 0, "running": 0, "capacity": 0})
            entry["members"] += 1
            if st == "up":
                entry["running"] += int(running or 0)
                entry["capacity"] += int(capacity or 0)
        if st != "gone":
            listed[pairs, langs] += 1
        if st == "up":
            listed_slots[pairs] += int(capacity or 0)
    for (pairs, langs), count in listed.items():
        for pair in node_pairs(pairs):
            catalog["pairs"][pair] += count
        for lang in filter(None, langs.split(",")):
            catalog["languages"][lang] += count
    for pairs, slots in listed_slots.items():
        for pair in node_pairs(pairs):
            pair_slots[pair] += slots
    sessions: Counter[str] = Counter()
    spoken: Counter[str] = Counter()
    for src, tgt, closed in await _records(client, keys, "session", ["src", "tgt", "closed"]):
        sessions["closed" if closed == "1" else "open"] += 1
        if closed != "1":
            spoken[f"{src}>{tgt}"] += 1
    leases = {}
    for role in ROLES:
        holder = await client.get(keys.lease(role))
        leases[role] = text(holder) if holder is not None else None
    consumers = {}
    for stream, label in ((keys.log, "log"), (keys.decisions, "decisions")):
        if await client.exists(stream):
            for group in await client.xinfo_groups(stream):
                consumers[f"{label}/{text(group['name'])}"] = {
                    "pending": int(group["pending"]),
                    "lag": None if group.get("lag") is None else int(group["lag"]),
                }
    utilization = {
        name: {
            **entry,
            "free_slots": max(0, entry["capacity"] - entry["running"]),
            "utilization": round(entry["running"] / entry["capacity"], 3)
            if entry["capacity"]
            else 0.0,
        }
        for name, entry in sorted(pools.items())
    }
    return {
        "nodes_by_state": dict(sorted(nodes.items())),
        "sessions": {"open": sessions["open"], "closed": sessions["closed"]},
        "pairs_in_use": dict(sorted(spoken.items())),
        "catalog": {kind: dict(sorted(found.items())) for kind, found in catalog.items()},
        "pair_slots": dict(sorted(pair_slots.items())),
        "pools": utilization,
        "leases": leases,
        "consumers": consumers,
    }


async def read_stats(client: RedisClient, keys: CellKeys) -> dict[str, Any] | None:
    raw = await client.hget(keys.stats, "snapshot")
    return None if raw is None else cast(dict[str, Any], json.loads(raw))


def age_of(snapshot: dict[str, Any], now_wall_ms: int | None = None) -> tuple[int, bool]:
    """How old a snapshot is (ms, wall time), and whether that makes it stale."""
    now = int(time.time() * 1000) if now_wall_ms is None else now_wall_ms
    age_ms = max(0, now - int(snapshot["published_wall_ms"]))
    return age_ms, age_ms > STALE_WINDOWS * int(snapshot["window_ms"])


async def read_published(
    client: RedisClient, keys: CellKeys
) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """The latest snapshot (``read_stats``) and what the cell's windows counted since its
    stats began, by name (``_TOTAL``'s fields, without the prefix: the counters /metrics
    serves), in one read of the stats hash."""
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.stats))
    snapshot = raw.get(b"snapshot")
    totals = {
        text(name)[len(_TOTAL) :]: int(value)
        for name, value in raw.items()
        if text(name).startswith(_TOTAL) and value.isdigit()
    }
    return (None if snapshot is None else cast(dict[str, Any], json.loads(snapshot))), totals
