"""The old design's dispatch path, faithfully, on the same Redis and the same data.

The seeds' pre-optimization Phase 2 path (seeds/002: ``create_job_with_phase2_lock``),
with its in-process registry replaced by reads of eventsched's own projection, so both
designs decide over identical state:

1. the request binding is read (idempotency), a request lock taken (SET NX PX) and the
   binding read again under the lock;
2. the session's preferred pool and the language index are read;
3. for each candidate pool in order, every member's id and then every member's state
   (one pipelined HGETALL per member: kinder to the baseline than the seeds, which read
   an in-memory registry under a lock, but the same work per job);
4. candidates are filtered (up, fresh, not overloaded, serves the pair, free slot, no
   MODEL_NOT_AVAILABLE window) and sorted by load in Python;
5. ``try_reserve`` (a Lua script: check the slot, take it) per candidate until one
   succeeds;
6. then separate writes: the job record, the request binding, the hand-off to the node's
   inbox, and the lock released.
"""

from __future__ import annotations

import time
from typing import Any, cast

from bench import fleet
from bench.alone import percentile
from eventsched.dispatch.applier import APPLIER_GROUP, Applier
from eventsched.dispatch.lease import Lease
from eventsched.model.entries import node_pairs
from eventsched.model.keys import CellKeys
from eventsched.model.settings import DecisionSettings
from eventsched.store.append import append
from eventsched.store.client import RedisClient, Store, unlink_matching
from eventsched.store.streams import text, xrange_raw
from tests.harness import finalize

__all__ = ["compare", "dispatch", "measure"]

NODES = 10_000

# KEYS[1] node hash. ARGV none. Returns 1 and takes a slot when one is free, else 0.
_TRY_RESERVE = """
local f = redis.call('HMGET', KEYS[1], 'run', 'mc')
if tonumber(f[1]) >= tonumber(f[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'run', 1)
return 1
"""


def _eligible(
    fields: dict[bytes, bytes], pair: str, now_ms: int, settings: DecisionSettings
) -> bool:
    return (
        fields.get(b"st") == b"up"
        and now_ms - int(fields[b"hb"]) <= settings.heartbeat_fresh_ms
        and int(fields[b"cpu"]) <= settings.cpu_max_pct
        and int(fields[b"gpu"]) <= settings.gpu_max_pct
        and int(fields[b"mem"]) <= settings.mem_max_pct
        and pair in node_pairs(text(fields[b"pairs"]))
        and int(fields[b"run"]) < int(fields[b"mc"])
        and int(fields.get(f"na:{pair}".encode(), b"0")) <= now_ms
    )


async def dispatch(
    client: RedisClient,
    keys: CellKeys,
    reserve: Any,
    session: str,
    index: int,
    settings: DecisionSettings,
    now_ms: int | None = None,
) -> str | None:
    """One job through the old path; returns the chosen node, or None. Freshness is
    judged at ``now_ms`` (default: the wall clock)."""
    job_id = f"{session}:{index}"
    binding, lock = f"{keys.prefix}req:{job_id}", f"{keys.prefix}lock:{job_id}"
    if await client.get(binding) is not None:
        return None  # a repeat
    if not await client.set(lock, "1", nx=True, px=5000):
        return None
    try:
        if await client.get(binding) is not None:
            return None
        src, tgt, preferred = cast(
            list[bytes], await client.hmget(keys.session(session), ["src", "tgt", "pool"])
        )
        pair = f"{text(src)}>{text(tgt)}"
        listed = text(await client.hget(keys.lang_index, pair) or b"")
        pools = [p for p in listed.split(",") if p]
        if preferred and text(preferred) in pools:
            pools.remove(text(preferred))
            pools.insert(0, text(preferred))
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        for pool in pools:
            members = cast(list[bytes], await client.zrange(keys.pool(pool), 0, -1))
            async with client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(keys.node(text(member)))
                states = cast(list[dict[bytes, bytes]], await pipe.execute())
            candidates = [
                (int(f[b"run"]) / int(f[b"mc"]), text(member))
                for member, f in zip(members, states, strict=True)
                if _eligible(f, pair, now_ms, settings)
            ]
            candidates.sort()
            for _, chosen in candidates:
                if int(await reserve(keys=[keys.node(chosen)])) == 1:
                    await client.hset(
                        keys.job(job_id),
                        mapping={"node": chosen, "pool": pool, "att": 1, "st": "run"},
                    )
                    await client.set(binding, chosen)
                    await client.xadd(keys.inbox(chosen), {"job": job_id, "att": 1, "sid": session})
                    return chosen
        return None
    finally:
        await client.delete(lock)


async def measure(
    client: RedisClient,
    keys: CellKeys,
    sessions: list[str],
    index: int,
    settings: DecisionSettings,
) -> list[float]:
    """Seconds per job of the old path, one job per session, on a built cell."""
    reserve = client.register_script(_TRY_RESERVE)
    took = []
    for session in sessions:
        started = time.perf_counter()
        chosen = await dispatch(client, keys, reserve, session, index, settings)
        took.append(time.perf_counter() - started)
        if chosen is None:
            raise RuntimeError(f"the baseline placed no job for {session}")
    return took


async def compare(url: str, jobs: int) -> dict[str, float]:
    """At 10,000 nodes, one job at a time: the client-observed time of one apply call
    holding one finalize (the decision, reservation, record and hand-off in one script),
    then the old path for as many jobs of other sessions over the same state."""
    client = Store(url).client()
    keys = CellKeys("c0", "benchbase")
    try:
        await fleet.build(client, keys, NODES, 2 * jobs)
        sessions = [s.session_id for s in fleet.sessions(2 * jobs)]
        # build's worker ("bench") holds the lease; hold it long enough for every call
        await Lease(client, keys.dispatch_lease, "bench", 600_000).keep()
        applier = Applier(client, keys, holder="bench")
        ours = []
        for session in sessions[:jobs]:
            entry_id = await append(client, keys, finalize(session, 0))
            entries = await xrange_raw(client, keys.log, entry_id, 1)
            await client.xreadgroup(APPLIER_GROUP, "bench", {keys.log: ">"}, count=1)
            started = time.perf_counter()
            await applier.apply(entries)
            ours.append(time.perf_counter() - started)
        old = await measure(client, keys, sessions[jobs:], 0, fleet.SETTINGS)
    finally:
        await unlink_matching(client, f"{keys.namespace}:*")
        await client.aclose()
    return {
        "dispatch_call_p50_ms": round(percentile(ours, 0.5) * 1000, 3),
        "dispatch_call_p99_ms": round(percentile(ours, 0.99) * 1000, 3),
        "baseline_p50_ms": round(percentile(old, 0.5) * 1000, 2),
        "baseline_p99_ms": round(percentile(old, 0.99) * 1000, 2),
        "speedup_vs_baseline_10k": round(percentile(old, 0.5) / percentile(ours, 0.5)),
    }
