"""One fixture parameter runs every Redis test twice: on the embedded fakeredis and on
the real Redis at REDIS_URL. Each test gets its own key namespace and removes its keys.

Without a real Redis the real half is skipped and the run ends with a loud line; under
CI=true a missing real Redis stops the run with a failure instead.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from eventsched.model.keys import CellKeys
from eventsched.store.client import MEMORY_URL, RedisClient, Store, unlink_matching
from tests.harness import Cell

REAL_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
STORE_KINDS = ("fake", "real")


def _real_redis_answers(url: str) -> bool:
    parsed = urllib.parse.urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1
        ) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


REAL_AVAILABLE = _real_redis_answers(REAL_URL)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not REAL_AVAILABLE and os.environ.get("CI") == "true":
        pytest.exit(f"CI=true and no real Redis answers at {REAL_URL}", returncode=3)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REAL_AVAILABLE:
        terminalreporter.write_line(
            f"!!! THE REAL-REDIS HALF OF THE SUITE DID NOT RUN: nothing answers at {REAL_URL} !!!",
            red=True,
            bold=True,
        )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a store: ``memory://`` or the real Redis (skipped when absent)."""
    if request.param == "real":
        if not REAL_AVAILABLE:
            pytest.skip(f"no real Redis at {REAL_URL}")
        yield REAL_URL
    else:
        yield MEMORY_URL


def new_namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def remove_namespace(client: RedisClient, namespace: str) -> None:
    await unlink_matching(client, f"{namespace}:*")


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[RedisClient]:
    redis_client = Store(store_url).client()
    yield redis_client
    await redis_client.aclose()


@pytest.fixture
async def cell(client: RedisClient) -> AsyncIterator[Cell]:
    namespace = new_namespace()
    harness = Cell(client, CellKeys("c0", namespace))
    yield harness
    await remove_namespace(client, namespace)
