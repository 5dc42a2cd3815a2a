"""The load generator against a live worker: every finalize ends, exactly once, in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from eventsched.model.keys import CellKeys
from eventsched.model.settings import DecisionSettings
from eventsched.sim.demo import run_demo
from eventsched.sim.loadgen import LoadSpec
from eventsched.store.client import Store
from tests.conftest import REAL_AVAILABLE, new_namespace, remove_namespace
from tests.servers import RedisProcess

pytestmark = pytest.mark.anyio

QUICK = LoadSpec(
    nodes=6,
    sessions=8,
    utterances=6,
    seed=3,
    gap_ms=(10, 40),
    service_ms=(5, 30),
    heartbeat_ms=100,
    down_ms=(800, 1200),
    timeout_s=60,
)
# Liveness scaled to the quick run: a node silent for 500 ms is lost.
QUICK_SETTINGS = DecisionSettings(heartbeat_fresh_ms=400, node_lost_ms=500)


async def test_a_demo_run_loses_nothing_and_keeps_order(store_url: str) -> None:
    namespace = new_namespace()
    try:
        report = await run_demo(store_url, CellKeys("c0", namespace), QUICK, QUICK_SETTINGS)
    finally:
        client = Store(store_url).client()
        await remove_namespace(client, namespace)
        await client.aclose()
    assert report.finalized == QUICK.sessions * QUICK.utterances
    assert report.delivered == report.finalized
    assert report.lost == 0
    assert report.duplicate_jobs == 0
    assert report.max_overcommit == 0
    assert report.out_of_order == 0
    assert report.dispatched > 0 and report.completed > 0 and report.nodes_lost >= 1
    assert report.dispatched + report.rejected == report.finalized
    assert report.completed + report.failed + report.rejected == report.finalized


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from eventsched.cli.app import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )


def test_the_demo_command_prints_its_figures_as_json() -> None:
    done = _cli("demo", "--json", "--nodes", "4", "--sessions", "3", "--utterances", "3")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["finalized"] == 9 and figures["lost"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("demo", "--redis-url", "bogus://x"), "unsupported Redis URL"),
        (("demo", "--redis-url", "redis://127.0.0.1:1/0"), "connecting to 127.0.0.1:1"),
        (("loadgen", "--redis-url", "memory://"), "needs a worker in another process"),
        (("worker", "--redis-url", "memory://"), "give a redis:// URL"),
        (("nodes", "--redis-url", "redis://127.0.0.1:1"), "connecting to 127.0.0.1:1"),
        (("nodes", "--redis-url", "memory://", "--cell", "zz"), "unknown cell es:{zz}"),
        (("pools", "apply", "/nonexistent.toml", "--redis-url", "memory://"), "no such file"),
        (("worker", "--redis-url", "redis://127.0.0.1:1", "--cells", "C0!"), "invalid cell name"),
    ],
)
def test_cli_errors_are_one_readable_line(args: tuple[str, ...], message: str) -> None:
    done = _cli(*args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not REAL_AVAILABLE, reason="processes talk to a real Redis")
def _acl_url(admin_url: str, *args: str) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "eventsched", "acl", *args, "--redis-url", admin_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("confined", [False, True], ids=["trusted", "confined"])
def test_the_examples_run_as_separate_processes(tmp_path: Path, confined: bool) -> None:
    """A worker, two echo nodes and the session client, each its own process; confined,
    each with the URL ``eventsched acl`` printed for it, taken as it is."""
    server = RedisProcess(tmp_path)
    server.start()
    examples = Path(__file__).parent.parent / "examples"
    if confined:
        worker_url = _acl_url(server.url, "add-worker", "w1")
        node_args = [["--redis-url", _acl_url(server.url, "add-node", f"echo-{i}")] for i in (1, 2)]
        gateway_url = _acl_url(server.url, "add-gateway", "gw1")
    else:
        worker_url = gateway_url = server.url
        node_args = [["--redis-url", server.url, "--node-id", f"echo-{i}"] for i in (1, 2)]
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from eventsched.cli.app import main; main()",
            "worker",
            "--redis-url",
            worker_url,
        ],
        stderr=subprocess.DEVNULL,
    )
    nodes = [
        subprocess.Popen(
            [sys.executable, str(examples / "echo_node.py"), *args, "--langs", "en,zh"],
            stderr=subprocess.DEVNULL,
        )
        for args in node_args
    ]
    try:
        done = subprocess.run(
            [
                sys.executable,
                str(examples / "session_client.py"),
                "--redis-url",
                gateway_url,
                "--utterances",
                "20",
                "--gap-ms",
                "20",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {
            "sent": 20,
            "received": 20,
            "in_order": True,
        }
        for process in [*nodes, worker]:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
    finally:
        for process in [*nodes, worker]:
            if process.poll() is None:
                process.kill()
        server.stop()
