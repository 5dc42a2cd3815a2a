"""What serving the queue costs (lua/queue.lua): Redis time of a result that frees a slot
and hands it to a waiting finalize, at 100,000 nodes with 10,000 finalizes waiting,
against the same result with nothing waiting and against a finalize decision.

The cell is ``bench.fleet``'s with one-slot nodes; all but KEPT of them report a CPU
above the threshold (out of their pools, as busy nodes are), so that KEPT slots serve
10,000 sessions: KEPT finalizes are placed and the rest wait. Each result then frees a
slot that the best waiting finalize of the node's pairs takes in the same call. The
serve reads the heads of the node's pairs' queues, never a whole queue or the fleet.

    python bench/queue_scale.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet
from bench.alone import print_figures
from bench.dispatch_scale import apply_measured
from eventsched.model.events import NodeHeartbeat, SettingsChanged
from eventsched.model.keys import CellKeys
from eventsched.store.client import Store, unlink_matching
from tests.harness import finalize

__all__ = ["measure"]

KEPT = 32  # one-slot nodes left in their pools
_LONG_WAIT = SettingsChanged(settings={"queue_wait_ms": 60_000, "queue_max": 100_000})


async def measure(url: str, nodes: int = 100_000, waiting: int = 10_000) -> dict[str, float]:
    client = Store(url).client()
    keys = CellKeys("c0", "benchqueue")
    sessions = [s.session_id for s in fleet.sessions(waiting + KEPT)]
    try:
        await fleet.build(client, keys, nodes, len(sessions), max_concurrency=1)
        busy = [
            NodeHeartbeat(node_id=fleet.node_id(i), cpu_pct=99, gpu_pct=50, mem_pct=50)
            for i in range(KEPT, nodes)
        ]
        await fleet.append_chunked(client, keys, [_LONG_WAIT, *busy])
        await fleet.apply(client, keys)
        # nothing waits: finalizes on the kept nodes, then their results
        await fleet.append_chunked(client, keys, [finalize(s, 0) for s in sessions[:KEPT]])
        finalize_usec, _ = await apply_measured(client, keys, 1)
        placed = await fleet.running_results(client, keys, sessions[:KEPT], 0)
        await fleet.append_chunked(client, keys, placed)
        plain_usec, _ = await apply_measured(client, keys, 1)
        # now every session finalizes: as many are placed as there are slots, most wait
        await fleet.append_chunked(client, keys, [finalize(s, 1) for s in sessions])
        await fleet.apply(client, keys)
        queued = int(sum(int(n) for n in (await client.hgetall(keys.queued)).values()))
        serve_usec = served = 0
        for _ in range(3):  # each result's slot goes to a waiting finalize
            results = await fleet.running_results(client, keys, sessions, 1)
            await fleet.append_chunked(client, keys, results)
            usec, _ = await apply_measured(client, keys, 1)
            serve_usec, served = serve_usec + usec, served + len(results)
    finally:
        await unlink_matching(client, f"{keys.namespace}:*")
        await client.aclose()
    finalize_us = finalize_usec / KEPT
    result_us, serve_us = plain_usec / len(placed), serve_usec / served
    return {
        "queue_waiting": queued,
        "queue_finalize_redis_us": round(finalize_us, 1),
        "queue_result_redis_us_nothing_waits": round(result_us, 1),
        "queue_result_redis_us_10k_waiting": round(serve_us, 1),
        "queue_serve_vs_finalize_ratio": round((serve_us - result_us) / finalize_us, 2),
    }


if __name__ == "__main__":
    anyio.run(print_figures, measure)
