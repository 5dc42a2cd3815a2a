"""Fault tests with real processes on a private Redis with AOF (appendfsync always):
worker processes killed with SIGKILL while a load runs, and Redis itself crashed and
restarted once. Nothing may be lost, done twice, overcommitted or reordered, and
`eventsched verify` must pass afterwards."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import pytest
import redis

from eventsched.model.keys import CellKeys
from tests.conftest import REAL_AVAILABLE
from tests.servers import AofTail, RedisProcess, wait_until

pytestmark = pytest.mark.skipif(
    not REAL_AVAILABLE, reason="fault tests run where a real Redis is installed"
)

T = TypeVar("T")

CLI = [sys.executable, "-c", "from eventsched.cli.app import main; main()"]
KEYS = CellKeys()


def _spawn(*args: str, stdout: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], stdout=stdout, stderr=subprocess.DEVNULL, text=True, cwd=Path.cwd()
    )


def _worker(url: str, name: str) -> subprocess.Popen[str]:
    return _spawn("worker", "--redis-url", url, "--name", name, "--lease-ms", "1000")


def _patient(client: redis.Redis, read: Callable[[redis.Redis], T]) -> T:
    """A read that waits out the Redis restart."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return read(client)
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _holder(client: redis.Redis, timeout_s: float = 120) -> str:
    """Who holds the dispatch role, once someone does. Appends are decided while the
    role's lease stands, its holder alive or not, so progress does not say who holds it
    now: between a killed holder's lease running out and its replacement's takeover,
    nobody does."""
    lease = KEYS.lease("dispatch")
    deadline = time.monotonic() + timeout_s
    while (holder := _patient(client, lambda c: cast(bytes | None, c.get(lease)))) is None:
        assert time.monotonic() < deadline, "nobody took the dispatch role"
        time.sleep(0.05)
    return holder.decode()


def test_killed_workers_and_a_redis_crash_lose_nothing(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    client = redis.Redis.from_url(server.url)
    rng = random.Random(20261126)
    workers: dict[str, subprocess.Popen[str]] = {}
    loadgen: subprocess.Popen[str] | None = None
    try:
        for index in range(3):
            workers[f"w{index}"] = _worker(server.url, f"w{index}")
        loadgen = _spawn(
            "loadgen",
            "--redis-url",
            server.url,
            "--nodes",
            "30",
            "--sessions",
            "100",
            "--utterances",
            "20",
            "--seed",
            "11",
            "--json",
            stdout=subprocess.PIPE,
        )

        def decisions() -> int:
            return int(_patient(client, lambda c: c.xlen(KEYS.decisions)))

        def progressed(at_least: int) -> Callable[[], bool]:
            return lambda: decisions() >= at_least

        kills = 0
        for round_index in range(6):
            target = decisions() + rng.randint(150, 600)
            wait_until(progressed(target), "dispatch progress", 120)
            if round_index == 3:
                server.kill()  # a crash; AOF with fsync always keeps what was acknowledged
                server.start()
                continue
            name = _holder(client)
            workers[name].send_signal(signal.SIGKILL)
            workers[name].wait(timeout=10)
            kills += 1
            replacement = f"w{len(workers)}"
            workers[replacement] = _worker(server.url, replacement)
        assert kills == 5

        out, _ = loadgen.communicate(timeout=300)
        assert loadgen.returncode == 0
        figures = json.loads(out.strip().splitlines()[-1])
        assert figures["finalized"] == 2000
        assert (figures["lost"], figures["duplicate_jobs"], figures["max_overcommit"]) == (0, 0, 0)
        assert figures["out_of_order"] == 0
        assert figures["completed"] > 0

        verify = subprocess.run(
            [*CLI, "verify", "--redis-url", server.url, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert json.loads(verify.stdout)["finalized"] == 2000

        # Two-stage stop: SIGTERM finishes the batch in hand, releases leases, exits 0.
        alive = [p for p in workers.values() if p.poll() is None]
        for process in alive:
            process.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=30) for p in alive] == [0] * len(alive)
        assert _patient(client, lambda c: c.exists(KEYS.lease("dispatch"))) == 0
    finally:
        for process in [*workers.values(), *([loadgen] if loadgen else [])]:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        client.close()
        server.stop()


@pytest.mark.timeout(300)
def test_writes_redis_lost_are_sent_again_and_nothing_told_is_lost(tmp_path: Path) -> None:
    """A machine crash under appendfsync everysec (SIGKILL, the AOF cut back by a
    second), then a FLUSHALL, while 400 finalizes run: the load generator, counting what
    its gateway was told, gets an outcome for every one, and the worker carries on."""
    server = RedisProcess(
        tmp_path, "--appendonly", "yes", "--appendfsync", "everysec",
        "--auto-aof-rewrite-percentage", "0",
    )  # fmt: skip
    server.start()
    tail = AofTail(server)
    client = redis.Redis.from_url(server.url)
    worker = _worker(server.url, "w0")
    loadgen: subprocess.Popen[str] | None = None
    try:
        loadgen = _spawn(
            "loadgen", "--redis-url", server.url, "--nodes", "20", "--sessions", "40",
            "--utterances", "10", "--seed", "3", "--json", stdout=subprocess.PIPE,
        )  # fmt: skip

        def decided(at_least: int) -> Callable[[], bool]:
            return lambda: int(_patient(client, lambda c: c.xlen(KEYS.decisions))) >= at_least

        wait_until(decided(80), "dispatch progress", 120)
        assert tail.crash(server, 1.0) > 0
        wait_until(decided(80), "dispatch progress after the crash", 120)
        _patient(client, lambda c: c.flushall())

        out, _ = loadgen.communicate(timeout=240)
        figures = json.loads(out.strip().splitlines()[-1])
        counted = (figures["finalized"], figures["delivered"], figures["lost"])
        assert counted == (400, 400, 0), figures
        assert (figures["duplicate_jobs"], figures["max_overcommit"]) == (0, 0)
        assert figures["out_of_order"] == 0
        assert figures["resent"] > 0  # something was lost, and sent again
        assert worker.poll() is None
    finally:
        tail.close()
        for process in [worker, *([loadgen] if loadgen else [])]:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        client.close()
        server.stop()
