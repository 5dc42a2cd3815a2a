"""End to end at rising offered load: finalize -> result delivered, in utterance order,
to the session, with instant echo nodes.

Three processes besides Redis: a worker (``bench.procs worker``: dispatch, groups and
ticker roles), the echo nodes (``bench.procs nodes``, the node SDK) and this one, the
gateway, which opens sessions with the session client and finalizes open loop at each
rate. Latency runs from a finalize's *scheduled* time (so a gateway that falls behind
counts against the figure instead of hiding it) to its outcome reaching the session.
``cpu us`` is the scheduler's CPU time per finalize over the step, Redis's and the
worker's (its result, delivery and the heartbeats around it included):
``scheduler_cpu_us_per_finalize`` at 1,000/s; ``load us`` the load's, the echo nodes'
and this gateway's (``load_cpu_us_per_finalize`` at 1,000/s: when it nears a core, the
load, not the scheduler, is what falls behind, and ``e2e_sent_per_s_at_*`` falls short
of the offered rate). When this run started the Redis itself
(a child of this process, as bench/run.py's private server is), the scheduler (Redis
and the worker) is pinned to one core and the load (the nodes and this gateway) to the
other (``sched_setaffinity``, what ``taskset`` does), so each side has a core of its
own and neither's figures are the other's scheduling noise; a given Redis is left be.

    python bench/e2e.py [--rates 500,1000,2000,3000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fleet
from bench.alone import percentile, private_server, until
from bench.procs import spawn
from eventsched.clients.session import Session, SessionClient
from eventsched.model.events import Event
from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient, Store, unlink_matching

__all__ = ["LiveCell", "Step", "live_sessions", "measure", "scheduler_cpu_s"]

SESSIONS = 200
NODES = 8  # in production each is its own machine; here they share this one's cores
_DRAIN_S = 10.0  # after a step, how long its last outcomes may take before they count lost


@dataclass
class Step:
    rate: int
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    not_ok: int = 0
    elapsed_s: float = 0.0
    scheduler_cpu_s: float = 0.0  # Redis's and the worker's CPU time over the step
    load_cpu_s: float = 0.0  # the echo nodes' and this gateway's
    pinned: bool = False  # the scheduler and the load on a core each (see ``pinned``)

    @property
    def cpu_us_per_finalize(self) -> float:
        return _per_finalize(self.scheduler_cpu_s, self.sent)

    @property
    def load_us_per_finalize(self) -> float:
        return _per_finalize(self.load_cpu_s, self.sent)

    def pct(self, fraction: float) -> float:
        if len(self.latencies_ms) < self.sent:
            return float("inf")  # outcomes missing: no figure can stand for them
        return round(percentile(self.latencies_ms, fraction), 2)


async def _run_step(sessions: list[Session], step: Step, seconds: float) -> None:
    """Finalize at ``step.rate`` per second for ``seconds``, round the sessions."""
    scheduled: dict[tuple[str, int], float] = {}
    done = anyio.Event()
    total = int(step.rate * seconds)

    async def listen(session: Session) -> None:
        async for outcome in session.outcomes():
            started = scheduled.pop((session.session_id, outcome.utterance_index), None)
            if started is None:
                continue
            step.latencies_ms.append((time.perf_counter() - started) * 1000)
            step.not_ok += outcome.status != "ok"
            if len(step.latencies_ms) == total:
                done.set()

    async with anyio.create_task_group() as group:
        for session in sessions:
            group.start_soon(listen, session)
        began = time.perf_counter()
        while step.sent < total:
            due = min(total, int((time.perf_counter() - began) * step.rate) + 1)
            while step.sent < due:
                session = sessions[step.sent % len(sessions)]
                index = session.finalized
                scheduled[(session.session_id, index)] = began + step.sent / step.rate
                step.sent += 1
                await session.finalize(index, "pause", f"a/{index}", 1000)
            await anyio.sleep(max(0.0, began + step.sent / step.rate - time.perf_counter()))
        step.elapsed_s = time.perf_counter() - began
        with anyio.move_on_after(_DRAIN_S):
            await done.wait()
        group.cancel_scope.cancel()


@dataclass(frozen=True)
class LiveCell:
    sessions: list[Session]
    worker_pid: int
    nodes_pid: int


async def scheduler_cpu_s(client: RedisClient, worker_pid: int) -> float:
    """CPU seconds the scheduler has used so far: Redis (INFO cpu, all its threads: a
    private server counts this run only) and the worker process (/proc, user and system)."""
    info = await client.info("cpu")
    redis_s = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return redis_s + process_cpu_s(worker_pid)


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process has used so far (/proc, user and system)."""
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_cpu_s(live: LiveCell) -> float:
    """CPU seconds the load has used so far: the echo nodes' process and this one."""
    return process_cpu_s(live.nodes_pid) + process_cpu_s(os.getpid())


def _per_finalize(cpu_s: float, sent: int) -> float:
    return round(cpu_s / sent * 1e6) if sent else float("inf")


def _proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, parent, ...)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rpartition(")")[2].split()


@asynccontextmanager
async def live_sessions(
    url: str,
    client: RedisClient,
    keys: CellKeys,
    first: Sequence[Event],
    nodes: int,
    slots: int,
    sessions: int,
) -> AsyncIterator[LiveCell]:
    """A cell of the Redis at ``url`` whose log starts with ``first``, a worker process
    and ``nodes`` echo nodes of ``slots`` each in another, and ``sessions`` open sessions
    of this gateway (``client``); the cell's keys are removed afterwards."""
    try:
        await fleet.append_chunked(client, keys, first)
        with (
            spawn("worker", url, keys.namespace, keys.cell) as worker,
            spawn("nodes", url, keys.namespace, keys.cell, str(nodes), str(slots)) as echo,
        ):

            async def fleet_up() -> bool:
                return int(await client.zcard(keys.alive)) == nodes

            await until(fleet_up, "the echo nodes to register")
            async with SessionClient(client, keys, block_ms=50) as gateway:
                opened = [
                    await gateway.open(s.session_id, s.src_lang, s.tgt_lang)
                    for s in fleet.sessions(sessions)
                ]
                yield LiveCell(opened, worker.pid, echo.pid)
    finally:
        await unlink_matching(client, f"{keys.namespace}:*")


def _pin(pids: Sequence[int], cpus: set[int]) -> None:
    """Every thread of each process onto ``cpus``."""
    for pid in pids:
        for thread in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(thread), cpus)


def _parent_of(pid: int) -> int:
    return int(_proc_stat(pid)[1])


@contextmanager
def pinned(redis_pid: int, live: LiveCell) -> Iterator[bool]:
    """The scheduler on the last core, the load on the first, while inside; whether it
    pinned (only a Redis this process started, on a machine of two cores or more)."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 or _parent_of(redis_pid) != os.getpid():
        yield False
        return
    scheduler, load = [redis_pid, live.worker_pid], [live.nodes_pid, os.getpid()]
    _pin(scheduler, {max(cpus)})
    _pin(load, {min(cpus)})
    try:
        yield True
    finally:
        with suppress(FileNotFoundError, ProcessLookupError):  # a process that ended
            _pin([*scheduler, *load], cpus)


async def measure(url: str, rates: list[int], seconds: float) -> list[Step]:
    keys = CellKeys("c0", "benche2e")
    client: RedisClient = Store(url).client()
    steps = [Step(rate) for rate in rates]
    first: list[Event] = [fleet.SETTINGS_CHANGED, fleet.POOLS]
    try:
        async with live_sessions(url, client, keys, first, NODES, 64, SESSIONS) as live:
            redis_pid = int((await client.info("server"))["process_id"])
            with pinned(redis_pid, live) as pinning:
                for step in steps:
                    step.pinned = pinning
                await _run_steps(client, live, steps, seconds)
    finally:
        await client.aclose()
    return steps


async def _run_steps(
    client: RedisClient, live: LiveCell, steps: list[Step], seconds: float
) -> None:
    for step in steps:
        before, load_before = await scheduler_cpu_s(client, live.worker_pid), _load_cpu_s(live)
        await _run_step(live.sessions, step, seconds)
        step.scheduler_cpu_s = await scheduler_cpu_s(client, live.worker_pid) - before
        step.load_cpu_s = _load_cpu_s(live) - load_before


def figures(steps: list[Step]) -> dict[str, float]:
    out: dict[str, float] = {}
    for step in steps:
        out[f"e2e_p50_ms_at_{step.rate}"] = step.pct(0.5)
        out[f"e2e_p99_ms_at_{step.rate}"] = step.pct(0.99)
        # what the gateway got out: below the offered rate, the load fell behind
        out[f"e2e_sent_per_s_at_{step.rate}"] = round(step.sent / step.elapsed_s)
        if step.rate == 1000:
            out["scheduler_cpu_us_per_finalize"] = step.cpu_us_per_finalize
            out["load_cpu_us_per_finalize"] = step.load_us_per_finalize
    out["e2e_pinned"] = int(all(step.pinned for step in steps))
    under = [s.rate for s in steps if s.pct(0.99) <= 50 and not s.not_ok]
    out["e2e_max_rate_p99_50ms"] = max(under, default=0)
    return out


async def main(rates: list[int], seconds: float) -> None:
    with private_server() as url:
        steps = await measure(url, rates, seconds)
    print(
        f"{'offered/s':>10}{'sent/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'not ok':>8}"
        f"{'cpu us':>8}{'load us':>9}"
    )
    for step in steps:
        print(
            f"{step.rate:>10}{step.sent / step.elapsed_s:>10.0f}"
            f"{step.pct(0.5):>10}{step.pct(0.99):>10}{step.not_ok:>8}"
            f"{step.cpu_us_per_finalize:>8}{step.load_us_per_finalize:>9}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500,1000,2000,3000")
    parser.add_argument("--seconds", type=float, default=3.0)
    arguments = parser.parse_args()
    anyio.run(main, [int(r) for r in arguments.rates.split(",")], arguments.seconds)
