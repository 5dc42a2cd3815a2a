"""What reading the ingress streams costs a worker at 10,000 registered principals.

The worker reads only the streams whose bell rang, so a read with one stream rung costs
the same with 10 or 10,000 registered; the sweep (every 10 s, and after taking the
role) reads every registered stream, 512 per XREAD. Both figures are Redis time per
read (from INFO commandstats' xread usec), the first also as the whole call's wall time.

    python bench/ingress_scale.py [--nodes 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alone import percentile, print_figures
from eventsched.dispatch.ingress import Ingress
from eventsched.model.events import ENTRY_FIELD, encode_event
from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient, Store, unlink_matching
from tests.harness import beat

__all__ = ["measure"]


async def _xread_usec(client: RedisClient) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("usec", 0))


async def measure(url: str, nodes: int, reads: int = 200) -> dict[str, float]:
    client = Store(url).client()
    keys = CellKeys("c0", "benchingress")
    sources = [f"node:n{index}" for index in range(nodes)]
    raw = encode_event(beat("n0"))
    try:
        for start in range(0, nodes, 1000):
            async with client.pipeline(transaction=False) as pipe:
                for source in sources[start : start + 1000]:
                    pipe.zadd(keys.principals, {source: 0})
                    pipe.xadd(keys.ingress(source), {ENTRY_FIELD: raw})
                    pipe.xtrim(keys.ingress(source), maxlen=0)  # registered, empty
                await pipe.execute()
        ingress = Ingress(client, keys)
        before = await _xread_usec(client)
        started = time.perf_counter()
        while not await ingress.take() and ingress.pending:  # a sweep: each stream once
            pass
        sweep_ms = (time.perf_counter() - started) * 1000
        sweep_redis_ms = (await _xread_usec(client) - before) / 1000
        walls: list[float] = []
        before = await _xread_usec(client)
        for index in range(reads):
            source = sources[index % nodes]
            await client.xadd(keys.ingress(source), {ENTRY_FIELD: raw})
            ingress.ring(source)
            started = time.perf_counter()
            taken = await ingress.take()
            walls.append((time.perf_counter() - started) * 1000)
            assert len(taken) == 1
            await client.xtrim(keys.ingress(source), maxlen=0)
        read_redis_us = (await _xread_usec(client) - before) / reads
    finally:
        await unlink_matching(client, f"{keys.namespace}:*")
        await client.aclose()
    label = f"{nodes // 1000}k"
    return {
        f"ingress_read_redis_us_{label}": round(read_redis_us, 1),
        f"ingress_read_p50_ms_{label}": round(percentile(walls, 0.5), 3),
        f"ingress_sweep_ms_{label}": round(sweep_ms, 1),
        f"ingress_sweep_redis_ms_{label}": round(sweep_redis_ms, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    nodes = parser.parse_args().nodes
    anyio.run(print_figures, lambda url: measure(url, nodes))
