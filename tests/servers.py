"""Private redis-server processes for tests that must not touch the shared Redis as a
whole (SCRIPT FLUSH, FLUSHALL, restarts, persistence): a free port, a temp dir, stopped
by its own pid."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

__all__ = [
    "AofTail",
    "LocalCluster",
    "RedisProcess",
    "TlsFiles",
    "free_port",
    "get_when_listening",
    "make_tls_files",
    "private_cluster",
    "private_redis",
    "wait_until",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float = 20, every_s: float = 0.02
) -> None:
    """Poll ``condition`` until it holds (a process or a server coming to a state: a wait
    on the condition, not a sleep papering over a race); an AssertionError naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


def get_when_listening(url: str, timeout_s: float = 20) -> httpx.Response:
    """GET ``url`` as soon as a server listens there (a process just started)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(url)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling for the listener, not papering over a race


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA, and a server and a client certificate it signed (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=eventsched test CA")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.cnf",
                "-out", f"{name}.crt")  # fmt: skip
    return TlsFiles(
        *(directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key"))
    )


class RedisProcess:
    """A redis-server on a fixed port and directory that can be killed and restarted;
    with ``tls``, that port speaks TLS only and requires a client certificate, and
    ``url`` is a rediss:// URL carrying the client's files."""

    def __init__(
        self, directory: Path, *extra_args: str, tls: TlsFiles | None = None, port: int = 0
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self._command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            *extra_args,
        ]
        if tls is not None:
            self._command += [
                *("--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "yes"),
                *("--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key)),
                *("--tls-ca-cert-file", str(tls.ca)),
            ]
            self.url = (
                f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={tls.ca}"
                f"&ssl_certfile={tls.client_cert}&ssl_keyfile={tls.client_key}"
            )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        probe = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        try:
            while True:  # wait for the condition: the server answers (and has loaded)
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self._process.poll() is not None:
                        raise
                    time.sleep(0.02)
        finally:
            probe.close()

    @property
    def running(self) -> bool:
        return self._process is not None

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown save."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@contextmanager
def private_redis(directory: Path, *extra_args: str) -> Iterator[str]:
    """Start a redis-server; yields its URL, stops it afterwards."""
    server = RedisProcess(directory, *extra_args)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above it) is free and valid too."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


class LocalCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, every node
    its own redis-server in ``directory``: ``start`` returns its ``redis+cluster://`` URL once
    every slot is served; ``kill_master_of`` plays a crash of one master; ``stop`` stops
    every node by its process."""

    def __init__(
        self, directory: Path, masters: int = 3, node_timeout_ms: int = 2000, replicas: int = 1
    ) -> None:
        self.directory = directory
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisProcess] = []
        self.url = ""

    def start(self) -> str:
        for index in range(self.masters * (1 + self.replicas)):
            folder = self.directory / f"node{index}"
            folder.mkdir()
            options = ("--cluster-enabled", "yes", "--cluster-node-timeout",
                       str(self.node_timeout_ms))  # fmt: skip
            node = RedisProcess(folder, *options, port=_cluster_port())
            node.start()
            self.nodes.append(node)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas",
             str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        wait_until(self.serving, "the cluster to serve every slot", 30)
        self.url = "redis+cluster://" + ",".join(addresses)
        return self.url

    def _alive(self) -> list[RedisProcess]:
        return [node for node in self.nodes if node.running]

    def serving(self) -> bool:
        """Whether every live node says every slot is served (cluster_state ok)."""
        for node in self._alive():
            probe = redis.Redis(port=node.port, socket_timeout=2)
            try:
                if probe.cluster("INFO").get("cluster_state") != "ok":
                    return False
            except redis.RedisError:
                return False
            finally:
                probe.close()
        return True

    def master_port_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as a live node sees it."""
        probe = redis.Redis(port=self._alive()[0].port)
        try:
            slot = int(probe.cluster("KEYSLOT", key))
            for start, end, master, *_ in probe.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
                if start <= slot <= end:
                    return int(master[1])
        finally:
            probe.close()
        raise LookupError(f"no master serves the slot of {key!r}")

    def kill_master_of(self, key: str) -> int:
        """SIGKILL the master serving ``key``'s slot; returns its port."""
        port = self.master_port_of(key)
        next(node for node in self.nodes if node.port == port).kill()
        return port

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def private_cluster(directory: Path, masters: int = 3) -> Iterator[str]:
    """A started ``LocalCluster``'s URL; every node stopped afterwards."""
    cluster = LocalCluster(directory, masters)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class AofTail:
    """Watches the AOF file a server is appending to, so that a machine crash can be
    played: ``cut(1.0)`` truncates it to its size a second ago, the writes that
    ``appendfsync everysec`` had not yet made durable. Sizes are sampled every 20 ms,
    between Redis's own writes, so a cut falls on a command boundary."""

    def __init__(self, server: RedisProcess) -> None:
        self._folder = server.directory / "appendonlydir"
        self._samples: list[tuple[float, Path, int]] = []
        self._paused = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _newest(self) -> Path | None:
        files = sorted(self._folder.glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3]))
        return files[-1] if files else None

    def _sample(self) -> None:
        while not self._stopped.wait(0.02):
            newest = self._newest()
            if newest is not None and not self._paused.is_set():
                self._samples.append((time.monotonic(), newest, newest.stat().st_size))

    def crash(self, server: RedisProcess, lost_s: float) -> int:
        """SIGKILL the server, cut the last ``lost_s`` of its AOF, start it again;
        returns the bytes cut."""
        self._paused.set()
        server.kill()
        newest = self._newest()
        assert newest is not None, "the server keeps no AOF"
        before = time.monotonic() - lost_s
        kept = [size for at, path, size in self._samples if path == newest and at <= before]
        size = newest.stat().st_size
        with newest.open("r+b") as aof:
            aof.truncate(kept[-1] if kept else 0)
        server.start()
        self._paused.clear()
        return size - (kept[-1] if kept else 0)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
