"""The loss drills (see scripts/loss-drill): Redis loses acknowledged writes under load,
and the load generator, which counts on the gateway side, must still see every
finalize end with an outcome."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

EVENTSCHED = str(Path(sys.executable).with_name("eventsched"))
CUT_S = 1.0  # appendfsync everysec: what a machine crash may take with it
_STARTED: dict[int, float] = {}  # pid -> when the drill started it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    def __init__(self, directory: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        binary = shutil.which("redis-server") or "redis-server"
        self.command = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        self.command += ["--dir", str(directory), "--save", "", *args]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - the server's own
        self.process = subprocess.Popen(self.command, stdout=log, stderr=log)
        probe = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                if probe.ping():
                    break
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)
        probe.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class AofSizes:
    """Samples the size of the AOF file being appended to, so a crash can cut it back
    to what it held a second before (the writes fsync had not yet made durable)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "appendonlydir"
        self.samples: list[tuple[float, Path, int]] = []
        self.paused = threading.Event()
        self.stopped = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _newest(self) -> Path | None:
        files = sorted(self.directory.glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3]))
        return files[-1] if files else None

    def _run(self) -> None:
        while not self.stopped.is_set():
            newest = self._newest()
            if newest is not None and not self.paused.is_set():
                self.samples.append((time.monotonic(), newest, newest.stat().st_size))
            time.sleep(0.02)

    def cut(self, before_s: float) -> int:
        """Truncate the newest AOF file to its size ``before_s`` ago; returns the bytes cut."""
        at = time.monotonic() - before_s
        newest = self._newest()
        assert newest is not None
        older = [size for when, path, size in self.samples if path == newest and when <= at]
        keep = older[-1] if older else 0
        cut = newest.stat().st_size - keep
        with newest.open("r+b") as aof:
            aof.truncate(keep)
        return cut


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([EVENTSCHED, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def loadgen(url: str, nodes: int, sessions: int, seed: int) -> subprocess.Popen[bytes]:
    process = spawn(
        "loadgen", "--redis-url", url, "--json", "--nodes", str(nodes),
        "--sessions", str(sessions), "--utterances", "20", "--seed", str(seed),
    )  # fmt: skip
    _STARTED[process.pid] = time.monotonic()
    return process


def crash(directory: Path) -> int:
    server = Server(directory, "--appendonly", "yes", "--appendfsync", "everysec",
                    "--auto-aof-rewrite-percentage", "0")  # fmt: skip
    server.start()
    sizes = AofSizes(directory)
    workers = [spawn("worker", "--redis-url", server.url, "--name", n) for n in ("wa", "wb")]
    try:
        load = loadgen(server.url, 30, 100, 5)
        for at_s in (2.0, 4.5):
            wait_until(load, at_s)
            sizes.paused.set()
            server.kill()
            cut = sizes.cut(CUT_S)
            print(f"kill -9 Redis at {at_s} s, cut {cut} bytes of AOF, restart", flush=True)
            server.start()
            sizes.paused.clear()
        out, _ = load.communicate(timeout=600)
        report = json.loads(out.decode().strip().splitlines()[-1])
        print(json.dumps(report, sort_keys=True))
        verify = subprocess.run([EVENTSCHED, "verify", "--redis-url", server.url], check=False)
        return 0 if verify.returncode == 0 and _nothing_lost(report, 2000) else 1
    finally:
        sizes.stopped.set()
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
        server.stop()


def wait_until(process: subprocess.Popen[bytes], at_s: float) -> None:
    """Sleep until ``at_s`` seconds after ``process`` started (a drill's schedule)."""
    time.sleep(max(0.0, _STARTED[process.pid] + at_s - time.monotonic()))


def flush(directory: Path) -> int:
    server = Server(directory, "--appendonly", "no")
    server.start()
    worker = spawn("worker", "--redis-url", server.url, "--name", "wa")
    try:
        load = loadgen(server.url, 20, 40, 7)
        wait_until(load, 2.5)
        redis.Redis.from_url(server.url).flushall()
        print("FLUSHALL at 2.5 s", flush=True)
        out, _ = load.communicate(timeout=600)
        report = json.loads(out.decode().strip().splitlines()[-1])
        print(json.dumps(report, sort_keys=True))
        alive = worker.poll() is None
        print(f"worker still running: {alive}")
        return 0 if alive and _nothing_lost(report, 800) else 1
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.stop()


def _nothing_lost(report: dict[str, int], expected: int) -> bool:
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
