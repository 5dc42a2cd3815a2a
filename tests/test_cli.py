"""The operator's CLI over a replayed fixture, on fakeredis and on the real Redis: each
command's --json output against a golden; errors are one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from eventsched.cli.app import app
from redis.crc import key_slot
from typer.testing import CliRunner

from eventsched.model.keys import CellKeys
from eventsched.ops.replay import load_fixture, play
from eventsched.store.client import Store, is_memory_url
from tests.conftest import new_namespace, remove_namespace
from tests.servers import RedisProcess

ROOT = Path(__file__).parent.parent
FIXTURE = ROOT / "replay_fixtures" / "06_model_not_available_storm.jsonl"
GOLDENS = Path(__file__).parent / "goldens"
COMMANDS = {
    "nodes": ["nodes"],
    "node_show": ["node", "show", "n1"],
    "pools": ["pools"],
    "sessions": ["sessions"],
    "session_show": ["session", "show", "s1"],
    "jobs": ["jobs"],
    "jobs_done": ["jobs", "--state", "done"],
    "job_show": ["job", "show", "s1:0"],
}


@pytest.fixture
async def cell_url(store_url: str, anyio_backend: str) -> AsyncIterator[tuple[str, str]]:
    """(URL, namespace) of a cell left as the fixture leaves it. The embedded store is
    named, so each command's own client finds the same one."""
    url = f"memory://cli-{uuid.uuid4().hex[:8]}" if is_memory_url(store_url) else store_url
    namespace = new_namespace()
    client = Store(url).client()
    await play(client, CellKeys("c0", namespace), load_fixture(FIXTURE))
    yield url, namespace
    await remove_namespace(client, namespace)
    await client.aclose()


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_answers_its_golden_json(cell_url: tuple[str, str], name: str) -> None:
    url, namespace = cell_url
    output = _invoke(*COMMANDS[name], "--redis-url", url, "--namespace", namespace, "--json")
    found = json.loads(output)
    golden = GOLDENS / f"cli_{name}.json"
    if os.environ.get("EVENTSCHED_UPDATE_GOLDENS"):
        golden.write_text(json.dumps(found, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    assert found == json.loads(golden.read_text(encoding="utf-8"))


def test_streams_lists_every_stream_with_its_groups(cell_url: tuple[str, str]) -> None:
    url, namespace = cell_url
    rows = json.loads(_invoke("streams", "--redis-url", url, "--namespace", namespace, "--json"))
    by_name = {row["stream"]: row for row in rows}
    assert {"log", "decisions", "inbox:n1", "inbox:n2", "out:s1"} <= set(by_name)
    log = by_name["log"]
    assert log["length"] == len(load_fixture(FIXTURE).entries)
    assert [(g["name"], g["pending"]) for g in log["groups"]] == [("applier", 0)]
    assert [g["name"] for g in by_name["inbox:n1"]["groups"]] == ["node"]


def test_tail_decodes_the_log_and_filters_by_type(cell_url: tuple[str, str]) -> None:
    url, namespace = cell_url
    lines = _invoke(
        "tail",
        "--redis-url",
        url,
        "--namespace",
        namespace,
        "--count",
        "50",
        "--type",
        "job_result",
    ).splitlines()
    events = [json.loads(line) for line in lines]
    assert events and {e["type"] for e in events} == {"job_result"}
    assert events[0]["job_id"] == "s1:0" and events[0]["ok"] is False


def test_node_drain_and_pools_apply_append_events(
    cell_url: tuple[str, str], tmp_path: Path
) -> None:
    url, namespace = cell_url
    common = ["--redis-url", url, "--namespace", namespace]
    assert "appended" in _invoke("node", "drain", "n2", *common)
    good = tmp_path / "pools.toml"
    good.write_text('[[pools]]\nname = "asia"\nlanguages = ["en", "zh"]\norder = 1\n')
    assert "1 pools appended" in _invoke("pools", "apply", str(good), *common)
    tail = [json.loads(line) for line in _invoke("tail", *common, "--count", "2").splitlines()]
    assert [e["type"] for e in tail] == ["node_draining", "pools_configured"]
    assert tail[1]["pools"] == [{"name": "asia", "languages": ["en", "zh"], "order": 1}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '[[pools]]\nname = "a"\nlanguages = ["en", "zh"]\n[[pools]]\nname = "b"\n',
            ":4: pools.1.languages",
        ),
        ("[[pools]\n", "pools.toml: Expected ']]'"),
        ('[[pools]]\nname = "auto+x"\nlanguages = ["en", "zh"]\n', ":1: pools.0"),
    ],
)
def test_a_bad_pool_file_is_refused_with_its_line(
    tmp_path: Path, content: str, message: str
) -> None:
    from eventsched.ops.inspection import PoolFileError, load_pools_file

    with pytest.raises(PoolFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_pools_file(str(tmp_path / "pools.toml"), content)


def test_listings_can_span_every_cell(cell_url: tuple[str, str]) -> None:
    url, namespace = cell_url
    rows = json.loads(
        _invoke("nodes", "--redis-url", url, "--namespace", namespace, "--all-cells", "--json")
    )
    assert [(row["cell"], row["node_id"]) for row in rows] == [("c0", "n1"), ("c0", "n2")]


def test_a_bad_pool_file_appends_nothing(cell_url: tuple[str, str], tmp_path: Path) -> None:
    url, namespace = cell_url
    common = ["--redis-url", url, "--namespace", namespace]
    before = _invoke("tail", *common, "--count", "1")
    bad = tmp_path / "pools.toml"
    bad.write_text('[[pools]]\nname = "a"\nlanguages = ["english"]\n')
    result = CliRunner().invoke(app, ["pools", "apply", str(bad), *common])
    assert result.exit_code == 1
    assert "pools.toml:1: pools.0.languages.0" in str(result.exception)
    assert _invoke("tail", *common, "--count", "1") == before


def test_malformed_arguments_are_named(cell_url: tuple[str, str]) -> None:
    url, namespace = cell_url
    where = ["--redis-url", url, "--namespace", namespace]
    for args, said in (
        (["dlq", "show", "garbage"], "malformed dead-letter ID 'garbage'"),
        (["dlq", "requeue", "1-x"], "malformed dead-letter ID '1-x'"),
        (["tail", "--type", "bogus"], "unknown event type 'bogus': node_registered"),
    ):
        result = CliRunner().invoke(app, [*args, *where])
        assert said in str(result.exception), args


def test_replay_names_the_file_and_the_header_it_expects(tmp_path: Path) -> None:
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x00\xff\xfe")
    headless = tmp_path / "headless.jsonl"
    headless.write_text('{"event": {"type": "tick", "v": 1}, "t": 1}\n', encoding="utf-8")
    for path, said in ((binary, "not UTF-8"), (headless, '"format": "eventsched-replay/1"')):
        result = CliRunner().invoke(app, ["replay", str(path)])
        assert str(path) in str(result.exception) and said in str(result.exception)
    no_golden = tmp_path / "new.jsonl"
    no_golden.write_text(FIXTURE.read_text(encoding="utf-8"), encoding="utf-8")
    result = CliRunner().invoke(app, ["replay", "--check", str(no_golden)])
    assert result.exit_code == 1 and "no golden file" in result.stdout
    assert "DIFFERS" not in result.stdout


def test_a_redis_that_wants_a_password_is_named_in_words(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        with redis.Redis.from_url(server.url) as admin:
            admin.config_set("requirepass", "sekrit")
        done = subprocess.run(
            [sys.executable, "-m", "eventsched", "nodes", "--redis-url", server.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert done.stderr == (
            "eventsched: error: Redis wants a user and password: put user:password@ in the URL\n"
        )
    finally:
        server.stop()


def test_a_usage_error_is_plain_and_help_has_no_bool_metavars() -> None:
    wrong = subprocess.run(
        [sys.executable, "-m", "eventsched", "nodes", "--bogus"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines()[-1] == "Error: No such option: --bogus"
    assert not any(box in wrong.stderr for box in "╭│╰")
    helped = CliRunner().invoke(app, ["worker", "--help"])
    assert "--all-cells" in helped.stdout and "<bool>" not in helped.stdout


def test_node_drain_and_undrain_append_their_events_for_a_known_node(
    cell_url: tuple[str, str],
) -> None:
    url, namespace = cell_url
    where = ["--redis-url", url, "--namespace", namespace]
    assert "drain of n1 appended as log entry" in _invoke("node", "drain", "n1", *where)
    drained = _invoke("tail", "--count", "1", *where)
    assert json.loads(drained)["type"] == "node_draining"
    assert "undrain of n1 appended as log entry" in _invoke("node", "undrain", "n1", *where)
    tail = _invoke("tail", "--count", "1", *where)
    assert json.loads(tail)["type"] == "node_undrained"
    missing = CliRunner().invoke(app, ["node", "undrain", "nope", *where])
    assert "no node nope" in str(missing.exception)


def test_tables_never_cut_identifiers_and_name_columns_as_the_json_does(
    cell_url: tuple[str, str],
) -> None:
    url, namespace = cell_url
    where = ["--redis-url", url, "--namespace", namespace]
    narrow = {"COLUMNS": "60"}
    ids = [row["job_id"] for row in json.loads(_invoke("jobs", "--json", *where))]
    table = CliRunner().invoke(app, ["jobs", *where], env=narrow).stdout
    assert ids and all(job_id in table for job_id in ids)  # whole, on one line each
    listed = CliRunner().invoke(app, ["nodes", "--all-cells", *where], env={"COLUMNS": "200"})
    header = listed.stdout.splitlines()[2].replace("┃", " ").split()
    assert header[:2] == ["cell", "node_id"] and header[-1] == "pairs"
    letters = CliRunner().invoke(app, ["dlq", "list", *where]).stdout
    assert "dlq_id" in letters and "log_id" in letters


def test_settings_are_shown_and_changed_through_the_log(
    cell_url: tuple[str, str], tmp_path: Path
) -> None:
    url, namespace = cell_url
    common = ["--redis-url", url, "--namespace", namespace]
    shown = json.loads(_invoke("settings", "show", *common, "--json"))
    # the fixture's header: in force before its first entry, changed by no log entry
    assert shown["since"] is None
    assert shown["settings"]["node_lost_ms"] == 60_000 and shown["defaults"]["node_lost_ms"] == 5000
    assert "node_lost_ms" in _invoke("settings", "show", *common)
    said = _invoke("settings", "set", "rate_burst=2", *common, "--wait", "0")
    assert said.startswith("settings_changed ") and said.split("\n")[0].endswith(": rate_burst=2")
    assert "not applied within 0 s" in said  # no worker here: it waits in the log
    good = tmp_path / "settings.toml"
    good.write_text("job_timeout_ms = 2000\nrate_burst = 2\n")
    assert ": job_timeout_ms=2000 rate_burst=2" in _invoke(
        "settings", "apply", str(good), *common, "--wait", "0"
    )
    tail = [json.loads(line) for line in _invoke("tail", *common, "--count", "2").splitlines()]
    assert [e["settings"] for e in tail] == [
        {"rate_burst": 2},
        {"job_timeout_ms": 2000, "rate_burst": 2},
    ]


@pytest.mark.parametrize(
    ("args", "content", "said"),
    [
        (["set", "bogus=1"], None, "unknown setting 'bogus'"),
        (["set", "rate_burst=0"], None, "rate_burst: 0 is not an integer from 1 to 10000"),
        (["set", "rate_burst=2.5"], None, "rate_burst: '2.5' is not an integer"),
        (["set", "expire_after_ms=1000"], None, "expire_after_ms must be 0 or at least"),
        (["apply"], "rate_burst = ", "settings.toml: not TOML"),
        (["apply"], "[limits]\nrate_burst = 2\n", "unknown setting 'limits'"),
        (["apply"], "rate_burst = true\n", "rate_burst: True is not an integer"),
        (["apply"], "", "settings.toml: sets no setting"),
    ],
)
def test_a_bad_setting_is_named_and_appends_nothing(
    cell_url: tuple[str, str], tmp_path: Path, args: list[str], content: str | None, said: str
) -> None:
    url, namespace = cell_url
    common = ["--redis-url", url, "--namespace", namespace]
    if content is not None:
        (tmp_path / "settings.toml").write_text(content)
        args = [*args, str(tmp_path / "settings.toml")]
    before = _invoke("tail", *common, "--count", "1")
    result = CliRunner().invoke(app, ["settings", *args, *common])
    assert result.exit_code == 1
    assert said in str(result.exception) and "\n" not in str(result.exception)
    assert _invoke("tail", *common, "--count", "1") == before


def test_cells_are_listed_with_their_slots(cell_url: tuple[str, str]) -> None:
    url, namespace = cell_url
    listed = {"listed": True, "nodes": 0, "sessions": 0, "free_slots": 0, "offered_ms": None}
    c0 = {"cell": "c0", "slot": 10282, "master": None, **listed}  # one Redis: no master
    rows = json.loads(_invoke("cells", "--redis-url", url, "--namespace", namespace, "--json"))
    assert rows == [c0]  # listed when its dispatch role was taken; no offer written yet
    Store(url).sync_client().xadd(CellKeys("c2", namespace).log, {"e": "{}"})
    rows = json.loads(
        _invoke("cells", "--redis-url", url, "--namespace", namespace, "--add", "c1", "--json")
    )
    unlisted = dict.fromkeys(("nodes", "sessions", "free_slots", "offered_ms"))
    assert rows == [
        c0,
        {**c0, "cell": "c1", "slot": key_slot(b"{c1}")},
        {**c0, "cell": "c2", "slot": key_slot(b"{c2}"), "listed": False, **unlisted},
    ]  # a cell with a log is found by SCAN; --add lists one with none
    bad = CliRunner().invoke(
        app, ["cells", "--redis-url", url, "--namespace", namespace, "--add", "C!"]
    )
    assert bad.exit_code == 1 and "invalid cell name" in str(bad.exception)
    empty = CliRunner().invoke(app, ["cells", "--redis-url", url, "--namespace", "nothing-here"])
    assert empty.exit_code == 1 and "no cells in namespace" in str(empty.exception)
