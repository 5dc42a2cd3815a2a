"""A long overload with retention on: does memory stay flat?

A private redis-server, ``eventsched worker --retain S`` in its own process (the command
operators run, retention as it ships), and this process as the load: a few SDK nodes
with one or two slots and a stream of sessions through the session client, each saying
20 utterances and closing, at ``--rate`` finalizes per second in all, several times
what the nodes can serve, so most are rejected ``no_capacity`` and every kind of key is
made (jobs, sessions, outputs, inboxes, rejections). Each minute it prints Redis's
``used_memory``, the worker's RSS, the cell's key count and log length, and what a
checkpoint read (lua/state.lua without streams, as the worker stores them) costs: the
Redis time of the minute's calls, from the slow log (the worker's checkpoints and one
of this process's), and the wall time of this process's one.

    python bench/soak.py [--minutes 10] [--rate 320] [--retain 30]

Not part of CI. The verdict compares the last minute with minute 2 (the first minute
of a run is filling the windows, not growing): memory and RSS within 1.2x, the
checkpoint time within its noise.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alone import private_server
from eventsched.clients.node import Job, JobOutput, Node
from eventsched.clients.session import Session, SessionClient
from eventsched.model.events import Services
from eventsched.model.keys import CellKeys
from eventsched.projections.cell_state import dump_state
from eventsched.store.client import RedisClient, Store
from eventsched.store.scripts import register

__all__ = ["main"]

NAMESPACE = "soak"
LANGS = ["en", "zh"]
NODES = ((1, "a"), (1, "b"), (2, "c"))  # slots, name: overloaded at any rate above ~60/s
UTTERANCES = 20


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _serve(job: Job) -> JobOutput:
    await anyio.sleep(0.03)
    return JobOutput(asr_text=f"heard {job.job_id}", nmt_text="translated", tts_duration_ms=0)


async def _checkpoint_ms(client: RedisClient, keys: CellKeys) -> float:
    """One checkpoint read, timed; one taken while the groups projection lags is taken
    again."""
    for _ in range(20):
        began = time.perf_counter()
        state = await dump_state(client, keys, with_streams=False)
        if state is not None:
            return (time.perf_counter() - began) * 1000
    return float("nan")


async def _checkpoint_redis_ms(client: RedisClient) -> float:
    """The median Redis time of the state script's calls since the last sample."""
    sha = register(client, "state").sha
    entries = await client.slowlog_get(10_000)
    await client.slowlog_reset()
    durations = [
        int(entry["duration"]) / 1000
        for entry in entries
        if len(entry["command"].split()) > 1 and entry["command"].split()[1] == sha.encode()
    ]
    return round(statistics.median(durations), 1) if durations else float("nan")


async def _sample(client: RedisClient, keys: CellKeys, worker_pid: int) -> dict[str, float]:
    memory = await client.info("memory")
    wall_ms = round(await _checkpoint_ms(client, keys), 1)
    keys_count = sum([1 async for _ in client.scan_iter(match=keys.all_pattern, count=1000)])
    return {
        "used_memory_mb": round(int(memory["used_memory"]) / 2**20, 1),
        "worker_rss_mb": round(_rss_mb(worker_pid), 1),
        "keys": keys_count,
        "log_entries": int(await client.xlen(keys.log)),
        "checkpoint_ms": wall_ms,
        "checkpoint_redis_ms": await _checkpoint_redis_ms(client),
    }


async def _speak(gateway: SessionClient, session_id: str, gap_s: float) -> None:
    session: Session = await gateway.open(session_id, "en", "zh")
    async with anyio.create_task_group() as both:

        async def listen() -> None:
            async for _ in session.outcomes():
                pass

        both.start_soon(listen)
        for index in range(UTTERANCES):
            await session.finalize(index, "pause", f"audio/{session_id}/{index}", 1000)
            await anyio.sleep(gap_s)
        await session.close()


async def soak(url: str, minutes: int, rate: int, retain_s: int) -> list[dict[str, float]]:
    keys = CellKeys("c0", NAMESPACE)
    store = Store(url)
    client = store.client()
    # Every call over 1 ms goes to the slow log, which the samples read and empty.
    await client.config_set("slowlog-log-slower-than", 1000)
    await client.config_set("slowlog-max-len", 10_000)
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("eventsched")), "worker", "--redis-url", url,
         "--namespace", NAMESPACE, "--retain", str(retain_s)],
    )  # fmt: skip
    # Sessions last about 10 s (20 utterances, a gap each): rate x 10 / 20 speak at once.
    gap_s = 0.5
    started_per_s = rate / UTTERANCES
    rows: list[dict[str, float]] = []
    try:
        services = Services(asr=LANGS, nmt=LANGS, tts=LANGS)
        nodes = [
            Node(store.client(), keys, f"n-{name}", services, slots, _serve, heartbeat_s=1.0,
                 load=lambda: (10, 10, 10))
            for slots, name in NODES
        ]  # fmt: skip
        gateway = SessionClient(store.client(), keys, block_ms=50)
        async with anyio.create_task_group() as load:
            for node in nodes:
                load.start_soon(node.run)
            async with gateway:
                began = time.monotonic()
                next_sample = began + 60
                for number in itertools.count():
                    load.start_soon(_speak, gateway, f"s{number}", gap_s)
                    now = time.monotonic()
                    if now >= next_sample:
                        row = {"minute": len(rows) + 1, **await _sample(client, keys, worker.pid)}
                        rows.append(row)
                        print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
                        next_sample += 60
                        if len(rows) == minutes:
                            break
                    await anyio.sleep(max(0.0, began + (number + 1) / started_per_s - now))
                load.cancel_scope.cancel()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        await client.aclose()
    return rows


def verdict(rows: list[dict[str, float]]) -> dict[str, float]:
    base, last = rows[min(1, len(rows) - 1)], rows[-1]
    return {
        f"{name}_last_vs_minute_{int(base['minute'])}": round(last[name] / base[name], 2)
        for name in ("used_memory_mb", "worker_rss_mb", "keys", "checkpoint_redis_ms")
        if base[name]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--rate", type=int, default=320, help="finalizes per second offered")
    parser.add_argument("--retain", type=int, default=30, help="the worker's --retain S")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with private_server() as url:
        rows = anyio.run(soak, url, args.minutes, args.rate, args.retain)
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + " --- |" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    for name, ratio in verdict(rows).items():
        print(f"{name:<40}{ratio:>8}")


if __name__ == "__main__":
    main()
