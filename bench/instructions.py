"""Instructions Redis spends per event inside apply.lua, counted by callgrind: the same
code gives the same count to the thousand on a busy machine, where timings move by a
fifth (docs/PERFORMANCE.md).

Starts ``redis-server`` (``--redis-server PATH`` for another build: one with symbols
lets ``callgrind_annotate`` attribute the count by function) under ``valgrind
--tool=callgrind``, counting only inside FCALL, on a free port in a temporary
directory, stopped by its pid; and counts, per event:

- batched, as a worker applies a backlog (bench/dispatch_scale.py's cell at 1,000
  nodes): 400 finalizes in calls of 24, their results in calls of 32, 1,000 heartbeats
  in calls of 64 (the dispatch projection alone);
- one call each, as the node SDK and the session client send them (append mode,
  decided and folded in the call), on a cell of 100 nodes: 200 finalizes, their
  results, 100 heartbeats.

The first round of each is left uncounted (the library loads, the keys are made).
About two minutes; needs valgrind. ``--json``: a JSON object as the last line.

    python bench/instructions.py [--redis-server PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet
from bench.alone import until
from bench.dispatch_scale import apply_measured
from eventsched.dispatch.worker import DEFAULT_BATCH, Worker
from eventsched.model.events import SettingsChanged
from eventsched.model.keys import CellKeys
from eventsched.store.append import decide_at_append, submit
from eventsched.store.client import UNREACHABLE, RedisClient, Store
from eventsched.store.streams import text, xrange_raw
from tests.harness import Cell, beat, finalize, node, ok, session
from tests.servers import free_port

__all__ = ["count"]

# Valgrind runs Redis some fifty times slower: nodes must stay fresh and jobs in time.
_SLOW = {
    "heartbeat_fresh_ms": 3_600_000,
    "node_lost_ms": 3_600_000,
    "job_timeout_ms": 3_600_000,
    "queue_wait_ms": 0,
    "expire_after_ms": 0,
    "rate_per_s": 10_000,
    "rate_burst": 10_000,
}


class Counted:
    """A redis-server under callgrind, collecting inside FCALL only."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._out = directory / "callgrind.out"
        self._dumps = 0
        self._process = subprocess.Popen(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={self._out}"),
                "--toggle-collect=fcallCommand",
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(directory), "--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _control(self, what: str) -> None:
        subprocess.run(
            ["callgrind_control", what, str(self._process.pid)], check=True, capture_output=True
        )

    async def count(self, work: Awaitable[int]) -> float:
        """Instructions inside FCALL per event of ``work`` (which returns its events)."""
        self._control("--zero")
        events = await work
        self._control("--dump")
        self._dumps += 1
        dump = Path(f"{self._out}.{self._dumps}").read_text(encoding="utf-8")
        summary = next(line for line in dump.splitlines() if line.startswith("summary:"))
        return int(summary.split()[1]) / max(events, 1)

    async def ready(self, client: RedisClient) -> None:
        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except UNREACHABLE:
                return False

        await until(answers, "redis-server under valgrind", 120)  # it takes seconds

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=60)


@contextmanager
def counted(binary: str) -> Iterator[Counted]:
    with tempfile.TemporaryDirectory() as directory:
        server = Counted(binary, Path(directory))
        try:
            yield server
        finally:
            server.stop()


async def _batched(server: Counted, client: RedisClient) -> dict[str, float]:
    keys = CellKeys("c0", "cgbatch")
    sessions = [s.session_id for s in fleet.sessions(400)]
    await fleet.build(client, keys, 1000, len(sessions))
    await fleet.append_chunked(client, keys, fleet.beats(1000, 1000))
    await apply_measured(client, keys, 64)

    async def applied(batch: int, events: int) -> int:
        await apply_measured(client, keys, batch)
        return events

    figures: dict[str, float] = {}
    for index in (0, 1):  # round 0 uncounted
        await fleet.append_chunked(client, keys, [finalize(s, index) for s in sessions])
        decided = await server.count(applied(DEFAULT_BATCH, len(sessions)))
        answered = await fleet.running_results(client, keys, sessions, index)
        await fleet.append_chunked(client, keys, answered)
        released = await server.count(applied(32, len(answered)))
        figures |= {"finalize_batched": decided, "result_batched": released}
    await fleet.append_chunked(client, keys, fleet.beats(1000, 1000, seed=5))
    figures["heartbeat_batched"] = await server.count(applied(64, 1000))
    return figures


async def _direct(server: Counted, client: RedisClient) -> dict[str, float]:
    cell = Cell(client, CellKeys("c0", "cgdirect"))
    # a worker holding the roles for the hour, as a running one renews them
    worker = Worker(client, [cell.keys], name="counted", lease_ms=3_600_000)
    nodes = [f"n{i:03d}" for i in range(100)]
    sessions = [f"s{i:03d}" for i in range(200)]
    await cell.append_live(SettingsChanged(settings=_SLOW))
    await cell.append_live(*(node(n, max_concurrency=4) for n in nodes))
    await cell.append_live(*(session(s) for s in sessions))
    await worker.drain()

    async def finalizes(index: int) -> int:
        for session_id in sessions:
            await submit(client, cell.keys, None, finalize(session_id, index))
        return len(sessions)

    async def results(index: int) -> int:
        jobs = []
        for node_id in nodes:
            for entry_id, fields in await xrange_raw(client, cell.keys.inbox(node_id)):
                job = {text(k): text(v) for k, v in fields.items()}
                if job["idx"] == str(index):
                    jobs.append((job["job"], int(job["att"]), node_id, text(entry_id)))
        for job_id, attempt, node_id, inbox_id in jobs:
            await decide_at_append(
                client, cell.keys, ok(job_id, attempt, node_id), ack=(node_id, inbox_id)
            )
        return len(jobs)

    async def beats() -> int:
        for node_id in nodes:
            await submit(client, cell.keys, None, beat(node_id))
        return len(nodes)

    figures: dict[str, float] = {}
    for index in (0, 1):  # round 0 uncounted
        figures["finalize_call"] = await server.count(finalizes(index))
        figures["result_call"] = await server.count(results(index))
    figures["heartbeat_call"] = await server.count(beats())
    await worker.release()
    return figures


async def count(binary: str) -> dict[str, float]:
    with counted(binary) as server:
        client = Store(server.url).client()
        try:
            await server.ready(client)
            figures = await _batched(server, client)
            figures |= await _direct(server, client)
        finally:
            await client.aclose()
    return {name: round(value) for name, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    if shutil.which("valgrind") is None or not os.path.exists(arguments.redis_server):
        sys.exit("needs valgrind and a redis-server")
    figures = anyio.run(count, arguments.redis_server)
    for name, value in figures.items():
        print(f"{name:<24}{value:>12,} instructions")
    if arguments.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
