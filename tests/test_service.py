"""The HTTP service (eventsched.service) on fakeredis and on the real Redis, through httpx
against the ASGI app: the stats snapshot with its age, pages of nodes, sessions and jobs
as the CLI shows them, Prometheus metrics that parse, health, readiness and the token;
and ``eventsched serve`` itself answering on a port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from eventsched.cli.app import app
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from eventsched.dispatch.worker import Worker
from eventsched.ops import inspection
from eventsched.projections.stats import STALE_WINDOWS, StatsBuilder
from eventsched.service.api import create_app
from eventsched.store.streams import read_stream
from tests.conftest import REAL_AVAILABLE, REAL_URL
from tests.harness import Cell, finalize, node, ok, session, wait_for
from tests.servers import free_port, get_when_listening

pytestmark = pytest.mark.anyio

TOKEN = "s3cret"


@pytest.fixture
async def api(cell: Cell, store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app serving ``cell``, with a token; the cell has nodes, a
    session, decisions and a published statistics window."""
    await cell.step(node("n1", max_concurrency=1), node("n2", max_concurrency=1))
    await cell.step(session("s1"), session("s2"))
    await cell.step(finalize("s1", 0), finalize("s2", 0), finalize("s2", 1))  # s2:1 waits
    cell.advance(40)
    await cell.step(ok("s1:0", 1, "n1"))  # its slot goes to s2:1, after 40 ms
    await cell.step(finalize("s1", 1))  # and this one waits
    builder = StatsBuilder()
    async for _, decision in read_stream(cell.client, cell.keys.decisions):
        builder.decision(decision)
    await builder.publish(cell.client, cell.keys, cell.now_ms)
    app = create_app(cell.client, cell.keys.namespace, ["c0"], TOKEN)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://es", headers=headers) as http,
    ):
        yield http


async def test_health_needs_no_token_and_everything_else_does(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz", headers={"Authorization": ""})).json() == {"ok": True}
    for path in ("/api/v1/stats", "/api/v1/nodes", "/metrics", "/api/v1/jobs/s1:0"):
        assert (await api.get(path, headers={"Authorization": ""})).status_code == 401, path
        assert (await api.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
        odd = {b"Authorization": "Bearer caf\u00e9".encode()}  # bytes that are not ASCII
        assert (await api.get(path, headers=odd)).status_code == 401
        assert (await api.get(path)).status_code == 200, path


async def test_stats_are_the_snapshot_with_zeros_and_its_age(
    api: httpx.AsyncClient, cell: Cell
) -> None:
    served = (await api.get("/api/v1/stats")).json()["cells"]["c0"]
    assert not served["stale"] and served["age_ms"] is not None
    snapshot = served["snapshot"]
    assert snapshot["counts"]["dispatched"] == 3 and snapshot["counts"]["queued"] == 2
    assert snapshot["counts"]["quarantines"] == 0 and snapshot["wait_p99_ms"] == 50
    assert snapshot["rejected"]["queue_full"] == 0 and snapshot["failed"]["timed_out"] == 0
    assert snapshot["nodes_by_state"] == {"ready": 2}
    assert snapshot["sessions"] == {"open": 2, "closed": 0}
    assert snapshot["pairs_in_use"] == {"en>zh": 2}
    assert snapshot["catalog"]["pairs"] == {"en>zh": 2, "zh>en": 2}
    assert snapshot["queues"]["en>zh"] == {"waiting": 1, "wait_p50_ms": 50, "wait_p99_ms": 50}
    pool = snapshot["pools"]["auto+en+zh"]
    assert (pool["members"], pool["running"], pool["capacity"], pool["free_slots"]) == (2, 2, 2, 0)
    assert snapshot["history"] == [
        {
            "window_start_ms": snapshot["window_start_ms"],
            "dispatch_rate_per_s": snapshot["dispatch_rate_per_s"],
            "dispatch_p99_ms": None,
            "e2e_p99_ms": 50,
            "wait_p99_ms": 50,
            "waiting": 1,
        }
    ]
    later = await StatsBuilder().publish(cell.client, cell.keys, cell.now_ms + 5000)
    assert [point["window_start_ms"] for point in later["history"]] == [
        snapshot["window_start_ms"],
        later["window_start_ms"],
    ]  # the last windows' figures, for the dashboard's charts
    snapshot = later
    # a worker that stopped publishing: the snapshot says so once it is 3 windows old
    old = {
        **snapshot,
        "published_wall_ms": snapshot["published_wall_ms"] - (STALE_WINDOWS + 1) * 5000,
    }
    await cell.client.hset(cell.keys.stats, "snapshot", json.dumps(old))
    assert (await api.get("/api/v1/stats")).json()["cells"]["c0"]["stale"] is True


async def test_nodes_come_in_pages_shaped_as_the_cli_shows_them(
    api: httpx.AsyncClient, cell: Cell
) -> None:
    first = (await api.get("/api/v1/nodes", params={"limit": 1})).json()
    assert [row["node_id"] for row in first["items"]] == ["n1"] and first["next"] == "n1"
    second = (await api.get("/api/v1/nodes", params={"limit": 1, "after": "n1"})).json()
    assert [row["node_id"] for row in second["items"]] == ["n2"] and second["next"] is None
    assert first["items"] + second["items"] == await inspection.list_nodes(cell.client, cell.keys)
    shown = (await api.get("/api/v1/nodes/n1")).json()
    assert shown == await inspection.node_detail(cell.client, cell.keys, "n1")
    job = (await api.get("/api/v1/jobs/s1:1")).json()
    assert (job["state"], [step["k"] for step in job["lineage"]]) == ("waiting", ["w"])
    assert (await api.get("/api/v1/jobs/s2:1")).json()["waited_ms"] == 40
    assert (await api.get("/api/v1/sessions/s1")).json()["session_id"] == "s1"
    for missing in ("/api/v1/nodes/ghost", "/api/v1/sessions/ghost", "/api/v1/jobs/s9:0"):
        assert (await api.get(missing)).status_code == 404, missing
    assert (await api.get("/api/v1/nodes", params={"cell": "c9"})).status_code == 404
    assert (await api.get("/api/v1/jobs/no-index")).status_code == 422
    assert (await api.get("/api/v1/nodes", params={"limit": 0})).status_code == 422


async def test_metrics_parse_and_count_what_the_windows_counted(api: httpx.AsyncClient) -> None:
    response = await api.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples[("eventsched_decisions_total", (("cell", "c0"), ("kind", "dispatched")))] == 3
    assert samples[("eventsched_decisions_total", (("cell", "c0"), ("kind", "queued")))] == 2
    assert samples[("eventsched_rejected_total", (("cell", "c0"), ("reason", "queue_full")))] == 0
    assert samples[("eventsched_nodes", (("cell", "c0"), ("state", "ready")))] == 2
    assert samples[("eventsched_queue_waiting", (("cell", "c0"), ("pair", "en>zh")))] == 1
    assert samples[("eventsched_pool_free_slots", (("cell", "c0"), ("pool", "auto+en+zh")))] == 0
    assert samples[("eventsched_wait_latency_seconds_sum", (("cell", "c0"),))] == 0.04
    # the ok result came 40 ms after its finalize: the (20, 50] ms bucket and above
    e2e = "eventsched_e2e_latency_seconds_bucket"
    assert samples[(e2e, (("cell", "c0"), ("le", "0.02")))] == 0
    assert samples[(e2e, (("cell", "c0"), ("le", "0.05")))] == 1
    assert samples[("eventsched_e2e_latency_seconds_sum", (("cell", "c0"),))] == 0.04


async def test_ready_only_while_a_worker_holds_every_role(
    api: httpx.AsyncClient, cell: Cell
) -> None:
    for role in ("dispatch", "groups"):  # the harness's worker is gone
        await cell.client.delete(cell.keys.lease(role))
    response = await api.get("/readyz", headers={"Authorization": ""})
    assert response.status_code == 503
    assert response.json()["reasons"] == [
        f"c0: no worker holds the {role} role" for role in ("dispatch", "groups", "ticker")
    ]
    worker = Worker(cell.client, [cell.keys], lease_ms=2000, block_ms=20, tick_ms=50)
    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run, stop)

        async def ready() -> bool:
            return (await api.get("/readyz")).status_code == 200

        await wait_for(ready)
        stop.set()
    assert (await api.get("/readyz")).status_code == 503  # the leases were released


async def test_the_openapi_document_lists_every_route(api: httpx.AsyncClient) -> None:
    paths = set((await api.get("/openapi.json")).json()["paths"])
    assert {"/healthz", "/readyz", "/metrics", "/api/v1/stats", "/api/v1/nodes"} <= paths
    assert {
        "/api/v1/nodes/{node_id}",
        "/api/v1/sessions/{session_id}",
        "/api/v1/jobs/{job_id}",
    } <= paths


@pytest.mark.skipif(not REAL_AVAILABLE, reason=f"no real Redis at {REAL_URL}")
def test_eventsched_serve_answers_on_its_port() -> None:
    """The command, in a process of its own (so on the real Redis only)."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("eventsched")), "serve", "--redis-url", REAL_URL]
    command += ["--namespace", "serve-test-empty", "--port", str(port)]
    env = {**os.environ, "EVENTSCHED_TOKEN": TOKEN}
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE) as server:
        try:
            base = f"http://127.0.0.1:{port}"
            assert get_when_listening(f"{base}/healthz").json() == {"ok": True}
            readiness = httpx.get(f"{base}/readyz")
            assert readiness.status_code == 503  # no worker serves the cell
            assert httpx.get(f"{base}/api/v1/stats").status_code == 401
        finally:
            server.terminate()
            server.wait(timeout=20)


def test_serve_refuses_the_embedded_store() -> None:
    result = CliRunner().invoke(app, ["serve", "--redis-url", "memory://"])
    assert result.exit_code == 1 and "give the redis:// URL" in str(result.exception)
