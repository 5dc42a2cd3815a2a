"""TLS: the scheduler, its clients and the CLI over ``rediss://`` against a private
redis-server that speaks TLS only and requires client certificates (fakeredis has no
TLS: these run on the real server only); and URL options refused with a reason."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from eventsched.sim.demo import run_demo
from eventsched.sim.loadgen import LoadSpec
from eventsched.store.client import Store
from tests.conftest import REAL_AVAILABLE
from tests.servers import RedisProcess, make_tls_files

CLI = [sys.executable, "-c", "from eventsched.cli.app import main; main()"]


@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[str]:
    if not REAL_AVAILABLE:  # conftest fails the run in CI when redis-server is missing
        pytest.skip("TLS tests need redis-server")
    server = RedisProcess(tmp_path, tls=make_tls_files(tmp_path))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.anyio
async def test_a_cell_runs_over_tls_and_the_cli_reads_it(tls_url: str) -> None:
    spec = LoadSpec(nodes=4, sessions=4, utterances=3, mortal_share=0, timeout_s=60)
    report = await run_demo(tls_url, spec=spec)
    assert (report.finalized, report.delivered, report.lost) == (12, 12, 0)
    verify = subprocess.run(
        [*CLI, "verify", "--redis-url", tls_url, "--json"], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["finalized"] == 12


def test_a_client_without_its_certificate_is_refused(tls_url: str) -> None:
    without_cert = tls_url.split("&ssl_certfile")[0]  # the CA only: no client certificate
    with pytest.raises(redis.ConnectionError):
        Store(without_cert).sync_client().ping()
    plain = "redis://" + tls_url.removeprefix("rediss://").split("?")[0]
    with pytest.raises(redis.ConnectionError):
        Store(plain).sync_client().ping()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("rediss://127.0.0.1:1/0?ssl_ca=/x", "unknown option 'ssl_ca' in the Redis URL"),
        ("redis://127.0.0.1:1/0?ssl_ca_certs=/x", "ssl_ca_certs is a TLS option: use a rediss"),
        ("rediss://127.0.0.1:1/0?ssl_certfile=/no/such.crt", "ssl_certfile: no such file"),
    ],
)
def test_url_options_are_checked_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Store(url)


def test_the_cli_says_what_is_wrong_with_a_url_in_one_line() -> None:
    result = subprocess.run(
        [*CLI, "stats", "--redis-url", "rediss://127.0.0.1:1/0?ssl_ca=/x"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "unknown option 'ssl_ca'" in result.stderr
