"""The statistics projection: a running worker publishes a snapshot per 5 s window of
event time; `eventsched stats` and `top` read it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from eventsched.cli.app import app
from eventsched.cli.monitor import frame
from rich.console import Console
from typer.testing import CliRunner

from eventsched.dispatch.worker import Worker
from eventsched.model.events import NodeDraining, SessionClosed, Tick
from eventsched.projections import stats
from eventsched.projections.stats import StatsBuilder, cell_shape, read_stats
from tests.conftest import REAL_AVAILABLE, REAL_URL, new_namespace
from tests.harness import Cell, beat, error, finalize, node, ok, session


def test_windows_count_decisions_and_bucket_latencies() -> None:
    builder = StatsBuilder(window_ms=5000)
    builder.decision({"k": "d", "att": "1", "at": "10100-0"})
    builder.decision({"k": "d", "att": "2", "at": "10150-0"})
    builder.decision({"k": "x", "reason": "no_capacity", "at": "10200-0"})
    builder.decision({"k": "o", "fin": "10100-0", "at": "10180-0"})
    builder.dispatched_after([10_000, 10_000], 10_003)
    assert builder.window_start == 10_000
    assert not builder.due(14_999) and builder.due(15_000)
    assert builder.counts == {
        "dispatched": 1,
        "retried": 1,
        "rejected:no_capacity": 1,
        "completed": 1,
    }
    assert builder.e2e[6] == 1  # 80 ms falls in the (50, 100] bucket
    assert builder.dispatch[2] == 2  # 3 ms in (2, 5]


@pytest.mark.anyio
async def test_the_cell_is_read_in_pages_that_miss_and_repeat_no_record(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cell.step(
        *(node(f"n{i}", max_concurrency=3) for i in range(5)),
        node("j0", langs=("en", "ja")),
        NodeDraining(node_id="n4"),
        *(session(f"s{i}") for i in range(7)),
        SessionClosed(session_id="s6"),
    )
    await cell.step(beat("n3", cpu=99))  # over cpu_max_pct: out of its pool
    whole = await cell_shape(cell.client, cell.keys)
    assert whole["nodes_by_state"] == {"ready": 4, "overloaded": 1, "drain": 1}
    assert whole["sessions"] == {"open": 6, "closed": 1}
    assert whole["pairs_in_use"] == {"en>zh": 6}
    assert whole["pair_slots"] == {"en>ja": 2, "en>zh": 12, "ja>en": 2, "zh>en": 12}
    monkeypatch.setattr(stats, "_RECORDS_PAGE", 2)  # four pages of nodes, a SCAN's of sessions
    assert await cell_shape(cell.client, cell.keys) == whole


@pytest.mark.anyio
async def test_a_running_worker_publishes_a_snapshot_that_the_cli_shows(
    cell: Cell, store_url: str
) -> None:
    # The worker's ticker appends ticks at the server's clock; run the cell's own clock a
    # minute ahead so that the events appended here come after them.
    # Windows are aligned to 5 s of event time: start just after a boundary.
    ahead = int(time.time() * 1000) + 60_000
    cell.now_ms = ahead - ahead % 5000 + 5000
    await cell.configure(node_lost_ms=600_000, heartbeat_fresh_ms=600_000)
    worker = Worker(cell.client, [cell.keys], lease_ms=500, block_ms=20, tick_ms=50)
    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run, stop)
        await cell.append(node("n1", max_concurrency=2), node("n2"), session("s1"))
        with anyio.fail_after(20):  # the follower starts once the worker holds dispatch
            while not worker.roles[0].taken:
                await anyio.sleep(0.01)
        cell.advance(100)
        await cell.append(finalize("s1", 0), finalize("s1", 1))
        cell.advance(150)
        placed: dict[str, str] = {}
        with anyio.fail_after(20):
            while len(placed) < 2:
                placed = await cell.dispatched_to()
                await anyio.sleep(0.01)
        await cell.append(ok("s1:0", 1, placed["s1:0"]), error("s1:1", 1, placed["s1:1"]))
        cell.advance(6000)
        await cell.append(Tick())
        snapshot = None
        with anyio.fail_after(20):
            while snapshot is None:
                snapshot = await read_stats(cell.client, cell.keys)
                await anyio.sleep(0.01)
        stop.set()
    assert snapshot is not None
    assert snapshot["counts"]["dispatched"] == 2
    assert snapshot["counts"]["completed"] >= 1 and snapshot["counts"]["model_not_available"] == 1
    assert snapshot["e2e_p50_ms"] == 200  # 150 ms from finalize to result: the (100, 200] bucket
    assert snapshot["nodes_by_state"] == {"ready": 2}
    assert snapshot["leases"]["dispatch"] == worker.name
    assert snapshot["dispatch_p50_ms"] is not None

    if store_url.startswith("memory://"):
        return  # the CLI opens its own connection: it needs a server it can reach
    common = ["--redis-url", store_url, "--namespace", cell.keys.namespace]
    # The CLI runs its own event loop: call it from a thread of its own.
    shown = await anyio.to_thread.run_sync(CliRunner().invoke, app, ["stats", *common, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["counts"] == snapshot["counts"]
    shown = await anyio.to_thread.run_sync(CliRunner().invoke, app, ["top", *common, "--once"])
    assert shown.exit_code == 0, shown.output
    assert "rate " in shown.stdout and f"dispatch {worker.name}" in shown.stdout


def _busy_snapshot(pools: int) -> dict[str, Any]:
    snapshot: dict[str, Any] = {
        "window_start_ms": 10_000,
        "window_ms": 5000,
        "published_wall_ms": int(time.time() * 1000) - 2000,
        "dispatch_rate_per_s": 120.5,
        "dispatch_p50_ms": 2,
        "dispatch_p99_ms": 20,
        "e2e_p50_ms": 100,
        "e2e_p99_ms": 500,
        "wait_p99_ms": 50,
        "counts": {"dispatched": 600, "completed": 590, "queued": 12, "retried": 3},
        "rejected": {"queue_timeout": 2, "rate_limited": 1},
        "failed": {"timed_out": 1},
        "nodes_by_state": {"ready": 120, "lost": 2, "draining": 1},
        "sessions": {"open": 300, "closed": 20},
        "leases": {"dispatch": "host-a-1234", "groups": "host-a-1234", "ticker": "host-b-99"},
        "queues": {"en>zh": {"waiting": 4, "wait_p50_ms": 20, "wait_p99_ms": 50}},
        "pools": {
            f"pool-{i:02d}-de+en+es+fr": {
                "members": 8, "running": i, "capacity": 32, "free_slots": 32 - i,
                "utilization": round(i / 32, 3),
            }
            for i in range(pools)
        },
    }  # fmt: skip
    return snapshot


@pytest.mark.parametrize("pools", [3, 40])
def test_top_fits_an_80x24_terminal_and_says_how_old_the_window_is(pools: int) -> None:
    console = Console(width=80, height=24, record=True, color_system=None)
    console.print(frame(_busy_snapshot(pools), "es:{c0}", console.height))
    lines = console.export_text().rstrip("\n").split("\n")
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80, lines
    assert "published 2 s ago" in lines[0] and lines[-1] == "q quits"
    shown = [line for line in lines if line.startswith("pool-")]
    assert shown[0].startswith(f"pool-{pools - 1:02d}")  # the busiest first
    if pools > 10:
        assert any(line.startswith(f"+{pools - len(shown)} more") for line in lines)
    else:
        assert len(shown) == pools
    stale = {**_busy_snapshot(1), "published_wall_ms": int(time.time() * 1000) - 60_000}
    console.print(frame(stale, "es:{c0}", 24))
    assert "STALE" in console.export_text()


@pytest.mark.skipif(not REAL_AVAILABLE, reason=f"no real Redis at {REAL_URL}")
def test_top_quits_on_q() -> None:
    """In a terminal of its own (a pty), a key press ends it at once."""
    namespace = new_namespace()
    client = redis.Redis.from_url(REAL_URL)
    client.xadd(f"{namespace}:{{c0}}:log", {"e": "{}"})  # a cell: it has a log
    command = [str(Path(sys.executable).with_name("eventsched")), "top"]
    command += ["--redis-url", REAL_URL, "--namespace", namespace]
    leader, follower = pty.openpty()
    try:
        with subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower) as shown:
            output = b""
            while b"waiting for a worker" not in output:  # the first frame is drawn
                assert shown.poll() is None, output
                output += os.read(leader, 4096)
            os.write(leader, b"q")
            assert shown.wait(timeout=20) == 0
    finally:
        os.close(leader)
        os.close(follower)
        client.delete(f"{namespace}:{{c0}}:log")
        client.close()
