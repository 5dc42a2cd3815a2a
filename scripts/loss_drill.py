"""The loss drills (see scripts/loss-drill): Redis loses acknowledged writes under load,
and the load generator, which counts on the gateway side, must still see every
finalize end with an outcome."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import AofTail, RedisProcess

EVENTSCHED = str(Path(sys.executable).with_name("eventsched"))
LOST_S = 1.0  # appendfsync everysec: what a machine crash may take with it


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([EVENTSCHED, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def loadgen(url: str, nodes: int, sessions: int, seed: int) -> subprocess.Popen[bytes]:
    return spawn(
        "loadgen", "--redis-url", url, "--json", "--nodes", str(nodes),
        "--sessions", str(sessions), "--utterances", "20", "--seed", str(seed),
    )  # fmt: skip


def report_of(load: subprocess.Popen[bytes]) -> dict[str, int]:
    out, _ = load.communicate(timeout=600)
    report: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    print(json.dumps(report, sort_keys=True))
    return report


def crash(directory: Path) -> int:
    server = RedisProcess(directory, "--appendonly", "yes", "--appendfsync", "everysec",
                          "--auto-aof-rewrite-percentage", "0")  # fmt: skip
    server.start()
    tail = AofTail(server)
    workers = [spawn("worker", "--redis-url", server.url, "--name", n) for n in ("wa", "wb")]
    try:
        began = time.monotonic()
        load = loadgen(server.url, 30, 100, 5)
        for at_s in (2.0, 4.5):  # a drill's schedule: while the sessions speak
            time.sleep(max(0.0, began + at_s - time.monotonic()))
            cut = tail.crash(server, LOST_S)
            print(f"kill -9 Redis at {at_s} s, cut {cut} bytes of AOF, restart", flush=True)
        report = report_of(load)
        verify = subprocess.run([EVENTSCHED, "verify", "--redis-url", server.url], check=False)
        return 0 if verify.returncode == 0 and nothing_lost(report, 2000) else 1
    finally:
        tail.close()
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
        server.stop()


def flush(directory: Path) -> int:
    server = RedisProcess(directory)
    server.start()
    worker = spawn("worker", "--redis-url", server.url, "--name", "wa")
    try:
        began = time.monotonic()
        load = loadgen(server.url, 20, 40, 7)
        time.sleep(max(0.0, began + 2.5 - time.monotonic()))
        redis.Redis.from_url(server.url).flushall()
        print("FLUSHALL at 2.5 s", flush=True)
        report = report_of(load)
        alive = worker.poll() is None
        print(f"worker still running: {alive}")
        return 0 if alive and nothing_lost(report, 800) else 1
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.stop()


def nothing_lost(report: dict[str, int], expected: int) -> bool:
    return (
        report["finalized"] == expected
        and report["delivered"] == expected
        and report["lost"] == 0
        and report["duplicate_jobs"] == 0
        and report["max_overcommit"] == 0
        and report["out_of_order"] == 0
    )


def main() -> int:
    drills = {"crash": crash, "flush": flush}
    if len(sys.argv) != 2 or sys.argv[1] not in drills:
        print("usage: scripts/loss-drill crash|flush", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as directory:
        return drills[sys.argv[1]](Path(directory))


if __name__ == "__main__":
    sys.exit(main())
