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
from tests.servers import private_cluster

REAL_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
STORE_KINDS = ("fake", "real")
# The contract suite also runs on a private Redis Cluster (3 masters, a replica each),
# the third store: dispatch, groups, the queue, settings, statistics, workers and their
# takeovers, ingress from confined principals, replay and record, the SDK and the session
# client end to end, the HTTP service. A command or script whose keys span two slots
# fails there with CROSSSLOT; tests/test_cluster.py adds cells on several masters.
CLUSTER_CONTRACT = (
    "test_applier", "test_cells", "test_clients", "test_dispatch", "test_end_to_end",
    "test_groups", "test_hostile_streams", "test_ingress", "test_lifecycle_rules",
    "test_operations", "test_poison", "test_projections", "test_queue", "test_recovery",
    "test_replay", "test_service", "test_settings", "test_sharing", "test_stats",
    "test_workers",
)  # fmt: skip


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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_url" in metafunc.fixturenames:
        module = metafunc.module.__name__.rpartition(".")[2]
        kinds = (*STORE_KINDS, "cluster") if module in CLUSTER_CONTRACT else STORE_KINDS
        metafunc.parametrize("store_url", kinds, indirect=True)


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Redis Cluster (3 masters, a replica each) for the whole run."""
    with private_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a store: ``memory://``, the real Redis (skipped when absent, a failure
    under CI), or for the contract modules a private Redis Cluster."""
    if request.param == "real":
        if not REAL_AVAILABLE:
            pytest.skip(f"no real Redis at {REAL_URL}")
        yield REAL_URL
    elif request.param == "cluster":
        yield request.getfixturevalue("cluster_url")
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
