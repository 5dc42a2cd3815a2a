"""One configuration story: every command finds its Redis, cell and namespace from the
flag, else EVENTSCHED_REDIS_URL / EVENTSCHED_CELL / EVENTSCHED_NAMESPACE, else the
default; and ``--version``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
import redis
from eventsched.cli.app import app
from typer.testing import CliRunner

from tests.conftest import REAL_AVAILABLE, REAL_URL

FIXTURE = Path(__file__).parent.parent / "replay_fixtures" / "01_two_way_conversation.jsonl"
# Every command that reads or writes a cell, with what it needs besides the cell.
CELL_COMMANDS = [
    ["stats"],
    ["top", "--once"],
    ["streams"],
    ["nodes"],
    ["pools"],
    ["sessions"],
    ["jobs"],
    ["node", "show", "n1"],
    ["session", "show", "s1"],
    ["job", "show", "s1:0"],
    ["tail", "--count", "1"],
    ["verify"],
    ["rebuild", "--projection", "groups"],
    ["dlq", "list"],
    ["dlq", "show", "1-0"],
    ["dlq", "requeue", "1-0"],
    ["record", "--out", "recorded.jsonl"],
    ["settings", "show"],
    ["settings", "set", "rate_burst=2"],
    ["settings", "apply", "settings.toml"],
]
UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.mark.parametrize("args", CELL_COMMANDS, ids=" ".join)
def test_every_cell_command_takes_its_redis_cell_and_namespace_from_the_environment(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text("rate_burst = 2\n")
    runner = CliRunner()
    unreachable = runner.invoke(app, args, env={"EVENTSCHED_REDIS_URL": UNREACHABLE})
    assert "127.0.0.1:1" in str(unreachable.exception)
    named = runner.invoke(
        app,
        args,
        env={
            "EVENTSCHED_REDIS_URL": "memory://config-story",
            "EVENTSCHED_CELL": "cz9",
            "EVENTSCHED_NAMESPACE": "nsenv",
        },
    )
    assert "unknown cell nsenv:{cz9}" in str(named.exception)
    flagged = runner.invoke(
        app,
        [*args, "--redis-url", "memory://config-story", "--cell", "cflag"],
        env={"EVENTSCHED_REDIS_URL": UNREACHABLE, "EVENTSCHED_CELL": "cz9"},
    )
    assert "unknown cell es:{cflag}" in str(flagged.exception)  # the flag wins


def test_the_other_commands_take_the_url_from_the_environment(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["acl", "list"], ["replay", str(FIXTURE)], ["cells"]):
        result = runner.invoke(app, args, env={"EVENTSCHED_REDIS_URL": UNREACHABLE})
        assert "127.0.0.1:1" in str(result.exception), args


def test_the_version_comes_from_the_package_metadata() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"eventsched {version('eventsched')}\n"


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "eventsched", *args]


@pytest.mark.skipif(not REAL_AVAILABLE, reason=f"no real Redis at {REAL_URL}")
def test_worker_loadgen_and_demo_use_the_database_the_environment_names() -> None:
    """The newcomer's case: the variables set, no flags; everything lands in db 9. The
    worker logs, one JSON object per line, the roles it takes and its clean stop."""
    namespace = f"t{uuid.uuid4().hex[:12]}"
    base = REAL_URL.rsplit("/", 1)[0] if REAL_URL.count("/") > 2 else REAL_URL
    db9 = redis.Redis.from_url(f"{base}/9")
    db0 = redis.Redis.from_url(f"{base}/0")
    env = {
        **os.environ,
        "EVENTSCHED_REDIS_URL": f"{base}/9",
        "EVENTSCHED_NAMESPACE": namespace,
        "EVENTSCHED_CELL": "cenv",
    }
    worker = subprocess.Popen(
        _command("worker", "-v", "--log-format", "json"),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for command, cell, sessions in (("loadgen", "cenv", 2), ("demo", "cdemo", 1)):
            ran = subprocess.run(
                _command(
                    command,
                    "--nodes",
                    "2",
                    "--sessions",
                    str(sessions),
                    "--utterances",
                    "2",
                    "--json",
                ),
                env={**env, "EVENTSCHED_CELL": cell},
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert ran.returncode == 0, ran.stderr
            assert json.loads(ran.stdout.strip().splitlines()[-1])["lost"] == 0
        worker.send_signal(signal.SIGTERM)
        _, logged = worker.communicate(timeout=30)
        assert worker.returncode == 0
        lines = [json.loads(line) for line in logged.splitlines()]  # each one JSON object
        messages = [line["message"] for line in lines]
        assert all(line["ts"].endswith("+00:00") and line["level"] for line in lines)
        for said in ("cenv/dispatch: taken over", "cenv/ticker: taken", "stopped, leases"):
            assert any(said in message for message in messages), (said, messages)
        for cell in ("cenv", "cdemo"):
            assert db9.exists(f"{namespace}:{{{cell}}}:log")
            assert not db0.exists(f"{namespace}:{{{cell}}}:log")
    finally:
        if worker.poll() is None:
            worker.kill()
        for key in db9.scan_iter(match=f"{namespace}:*", count=1000):
            db9.unlink(key)
        db9.close()
        db0.close()


@pytest.mark.skipif(not REAL_AVAILABLE, reason=f"no real Redis at {REAL_URL}")
def test_loadgen_without_a_worker_says_so_within_seconds() -> None:
    namespace = f"t{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "EVENTSCHED_REDIS_URL": REAL_URL, "EVENTSCHED_NAMESPACE": namespace}
    load = subprocess.Popen(
        _command("loadgen", "--nodes", "1", "--sessions", "1", "--utterances", "1"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = redis.Redis.from_url(REAL_URL)
    try:
        assert load.stderr is not None
        first = load.stderr.readline()  # blocks until the line comes (the test's timeout)
        assert "nothing is applying the log of" in first and "worker" in first
        assert load.poll() is None  # it says so and goes on waiting
    finally:
        load.kill()
        load.communicate()  # reaps it and closes its pipe
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            client.unlink(key)
        client.close()


def test_a_worker_config_file_sits_between_the_environment_and_the_defaults(
    tmp_path: Path,
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(f'[worker]\nredis_url = "{UNREACHABLE}"\nall_cells = true\n')
    runner = CliRunner()
    unset = {"EVENTSCHED_REDIS_URL": None}
    from_file = runner.invoke(app, ["worker", "--config", str(config)], env=unset)
    assert "127.0.0.1:1" in str(from_file.exception)  # the file over the default
    env_url = "redis://127.0.0.1:2/0"
    from_env = runner.invoke(
        app, ["worker", "--config", str(config)], env={"EVENTSCHED_REDIS_URL": env_url}
    )
    assert "127.0.0.1:2" in str(from_env.exception)  # the environment over the file
    from_flag = runner.invoke(
        app,
        ["worker", "--config", str(config), "--redis-url", "memory://"],
        env={"EVENTSCHED_REDIS_URL": env_url},
    )
    assert "give a redis:// URL" in str(from_flag.exception)  # the flag over both
    config.write_text("[worker]\nlease = 5\n")
    wrong = runner.invoke(app, ["worker", "--config", str(config)])
    assert wrong.exit_code == 2 and "unknown key 'lease'" in wrong.output
