"""Private redis-server processes for tests that must not touch the shared Redis as a
whole (SCRIPT FLUSH, restarts, persistence): a free port, a temp dir, stopped by pid."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

__all__ = ["private_redis"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def private_redis(directory: Path, *extra_args: str) -> Iterator[str]:
    """Start a redis-server; yields its URL. Fails the test if none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            *extra_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        probe = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:  # wait for the condition: the server answers PING
            try:
                if probe.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.02)
        probe.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
