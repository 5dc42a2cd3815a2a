"""The cluster drill (see scripts/cluster-drill): a Redis Cluster of 3 masters and 3
replicas on loopback, 16 cells over its slots, 4 workers sharing them, and a load
generator over every cell; one master is killed with SIGKILL mid-run, its replica takes
over, and the run must still end with every acknowledged finalize answered, nothing
twice, nobody overcommitted, in order, and every cell verified."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import redis.cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eventsched.model.keys import CellKeys
from eventsched.ops.verify import verify_cell
from eventsched.store.client import Store
from scripts.loss_drill import nothing_lost
from tests.servers import LocalCluster, wait_until

EVENTSCHED = str(Path(sys.executable).with_name("eventsched"))
NAMESPACE = "drill"
NODE_TIMEOUT_MS = 2000  # cluster-node-timeout: a silent master is failed over after it


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def spawn(*args: str, log: Path, out: int | None = None) -> subprocess.Popen[bytes]:
    """An eventsched command, its stderr (and its stdout unless piped) to ``log``."""
    with log.open("wb") as written:
        return subprocess.Popen([EVENTSCHED, *args], stdout=out or written, stderr=written)


def sessions_open(client: redis.cluster.RedisCluster, least: int) -> bool:
    found = sum(1 for _ in client.scan_iter(match=f"{NAMESPACE}:*:sess:*", count=1000))
    return found >= least


def roles_held(client: redis.cluster.RedisCluster, cells: list[CellKeys]) -> bool:
    return all(
        client.exists(keys.lease(role))
        for keys in cells
        for role in ("dispatch", "groups", "ticker")
    )


async def verify_all(url: str, cells: list[CellKeys]) -> list[str]:
    """The cells whose verify passes (the log replayed against the projections)."""
    client = Store(url).client()
    passed = []
    try:
        for keys in cells:
            report = await verify_cell(client, keys)
            if report.ok:
                passed.append(keys.cell)
            else:
                say(f"verify {keys.cell}: {report.problems[:3]}")
    finally:
        await client.aclose()
    return passed


def drill(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    cluster = LocalCluster(directory, masters=3, node_timeout_ms=NODE_TIMEOUT_MS)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        url = cluster.start()
        say(f"cluster: {url}")
        cells = [CellKeys(f"c{i}", NAMESPACE) for i in range(args.cells)]
        subprocess.run(
            [EVENTSCHED, "cells", "--redis-url", url, "--namespace", NAMESPACE,
             "--add", ",".join(keys.cell for keys in cells), "--json"],
            check=True, capture_output=True,
        )  # fmt: skip
        for index in range(args.workers):
            workers.append(
                spawn("worker", "--redis-url", url, "--namespace", NAMESPACE, "--all-cells",
                      "--name", f"w{index}", "-v", log=directory / f"w{index}.log")
            )  # fmt: skip
        probe = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        wait_until(lambda: roles_held(probe, cells), "every role of every cell to be held", 60)
        say(f"{args.workers} workers hold the {3 * len(cells)} roles of {len(cells)} cells")
        began = time.monotonic()
        load = spawn(
            "loadgen", "--redis-url", url, "--namespace", NAMESPACE, "--all-cells", "--json",
            "--nodes", str(args.nodes), "--sessions", str(args.sessions),
            "--utterances", str(args.utterances), "--seed", str(args.seed),
            log=directory / "loadgen.log", out=subprocess.PIPE,
        )  # fmt: skip
        opened = lambda: load.poll() is not None or sessions_open(probe, args.sessions // 2)  # noqa: E731
        wait_until(opened, "the sessions to open", 60)
        if load.poll() is not None:
            raise RuntimeError(f"loadgen ended early; see {directory / 'loadgen.log'}")
        time.sleep(1.0)  # a drill's schedule: a second into the speaking, not a race's patch
        victim = cells[0].log
        port = cluster.kill_master_of(victim)
        killed_at = time.monotonic()
        say(f"kill -9 the master at :{port} (serving {cells[0].cell}) at {killed_at - began:.1f} s")
        probe.close()
        taken_over = lambda: cluster.serving() and cluster.master_port_of(victim) != port  # noqa: E731
        wait_until(taken_over, "a replica to take over the killed master's slots", 60)
        failover_s = time.monotonic() - killed_at
        say(f"the cluster serves every slot again after {failover_s:.1f} s")
        out, _ = load.communicate(timeout=600)
        report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        say(f"loadgen: {json.dumps(report, sort_keys=True)}")
        passed = anyio.run(verify_all, url, cells)
        masters = {cluster.master_port_of(keys.log) for keys in cells}
        return {
            **{k: report[k] for k in ("finalized", "delivered", "lost", "duplicate_jobs",
                                      "max_overcommit", "out_of_order", "rejected", "failed",
                                      "resent", "retried", "nodes_lost")},
            "cells": len(cells),
            "cells_verified": len(passed),
            "masters_after": len(masters),
            "killed_master_port": port,
            "failover_s": round(failover_s, 1),
            "workers_alive": sum(worker.poll() is None for worker in workers),
        }  # fmt: skip
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster-drill", description=__doc__)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--cells", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=60)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--keep", type=Path, help="an empty directory to keep the nodes and logs in"
    )
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        result = drill(args.keep, args)
    else:
        with tempfile.TemporaryDirectory() as directory:
            result = drill(Path(directory), args)
    expected = args.sessions * args.utterances
    ok = nothing_lost(result, expected) and result["cells_verified"] == result["cells"]
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for name, value in sorted(result.items()):
            print(f"{name}: {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
