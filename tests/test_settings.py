"""Settings are events: a settings_changed entry holds from its place in the log on, in
any batch; a change that breaks the rule between settings is dead-lettered whole; the
cell's settings hash is a projection that verify, rebuild and record carry."""

from __future__ import annotations

import logging
import re

import anyio
import pytest
from eventsched.cli.app import app
from pydantic import ValidationError
from typer.testing import CliRunner

from eventsched.dispatch.worker import Worker
from eventsched.model.entries import APPLY_DEFAULTS
from eventsched.model.events import SettingsChanged, decode_event
from eventsched.model.settings import APPLY_ORDER, DEFAULTS, SETTING_NAMES, check_changes
from eventsched.ops.rebuild import rebuild_groups
from eventsched.ops.replay import check, record, replay
from eventsched.ops.tuning import change_settings, parse_assignments
from eventsched.ops.verify import verify_cell
from eventsched.projections.cell_settings import read_settings
from eventsched.store.scripts import lua_source
from tests.harness import Cell, finalize, node, ok, session

pytestmark = pytest.mark.anyio


def test_apply_lua_reads_its_defaults_in_the_order_python_passes_them() -> None:
    listed = re.search(r"local SETTING_NAMES = \{(.*?)\}", lua_source("apply"), re.DOTALL)
    assert listed is not None
    assert re.findall(r"'(\w+)'", listed.group(1)) == list(APPLY_ORDER)
    # the mode's ARGV position follows the prefix, the group, the holder and the
    # defaults, one argument: APPLY_ORDER's, then group_max_utterances's (for the
    # decisions apply.lua folds, see fold.lua)
    assert "local MODE = 5 " in lua_source("apply")
    [defaults] = APPLY_DEFAULTS
    assert defaults.split(" ") == [
        str(getattr(DEFAULTS, name)) for name in (*APPLY_ORDER, "group_max_utterances")
    ]
    # every setting is read by one script: group_max_utterances by groups.lua
    assert {*APPLY_ORDER, "group_max_utterances"} == set(SETTING_NAMES)


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"bogus": 1}, "unknown setting 'bogus'"),
        ({"rate_burst": 0}, "rate_burst: 0 is not an integer from 1 to 10000"),
        ({"cpu_max_pct": 101}, "cpu_max_pct: 101 is not an integer from 0 to 100"),
        ({"max_attempts": True}, "max_attempts: True is not an integer"),
    ],
)
def test_a_change_is_refused_naming_the_setting(changes: dict[str, int], said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        check_changes(changes)
    with pytest.raises(ValidationError):
        SettingsChanged(settings=changes)


def test_the_event_is_partial_and_the_rule_between_settings_holds_on_the_whole() -> None:
    event = decode_event('{"type":"settings_changed","v":1,"settings":{"rate_burst":2}}')
    assert isinstance(event, SettingsChanged) and event.settings == {"rate_burst": 2}
    with pytest.raises(ValidationError):
        decode_event('{"type":"settings_changed","v":1,"settings":{}}')
    with pytest.raises(ValueError, match=r"^expire_after_ms must be 0 or at least .*\(120000\)$"):
        DEFAULTS.changed({"job_timeout_ms": 15_000, "max_attempts": 3, "expire_after_ms": 1000})
    assert DEFAULTS.changed({"rate_burst": 2}).differences() == {"rate_burst": 2}


def test_assignments_are_parsed_and_named_when_wrong() -> None:
    assert parse_assignments(["rate_burst=2", " job_timeout_ms = 3000 "]) == {
        "rate_burst": 2,
        "job_timeout_ms": 3000,
    }
    for words, said in (
        ([], "at least one"),
        (["rate_burst"], "expected KEY=VALUE"),
        (["rate_burst=fast"], "rate_burst: 'fast' is not an integer"),
        (["rate_burst=2", "rate_burst=3"], "rate_burst is given twice"),
        (["speed=2"], "unknown setting 'speed'"),
    ):
        with pytest.raises(ValueError, match=re.escape(said)):
            parse_assignments(words)


async def test_a_change_holds_from_its_place_in_the_batch_on(cell: Cell) -> None:
    await cell.step(node("n1", max_concurrency=8), session("s1"))
    cell.advance(100)
    # one apply call: a finalize, the change, two more finalizes
    await cell.append(finalize("s1", 0))
    await cell.configure(job_timeout_ms=1000, rate_burst=1)
    await cell.append(finalize("s1", 1), finalize("s1", 2))
    await cell.apply()
    deadlines = {job: (await cell.hash(cell.keys.job(job)))["dl"] for job in ("s1:0", "s1:1")}
    assert deadlines == {"s1:0": str(cell.now_ms + 15_000), "s1:1": str(cell.now_ms + 1000)}
    assert [(d["idx"], d["reason"]) for d in await cell.decisions("x")] == [("2", "rate_limited")]
    found = await read_settings(cell.client, cell.keys)
    assert found.settings == cell.settings and found.settings.rate_burst == 1
    assert found.since is not None and found.since.startswith(f"{cell.now_ms}-")


async def test_a_worker_taking_the_cell_says_what_its_log_changed(
    cell: Cell, caplog: pytest.LogCaptureFixture
) -> None:
    await cell.configure(rate_burst=3)
    await cell.apply()
    with caplog.at_level(logging.INFO, logger="eventsched.worker"):
        await Worker(cell.client, [cell.keys], name="test-worker").drain()  # restarted
    (said,) = [r.getMessage() for r in caplog.records if "settings" in r.getMessage()]
    assert said.endswith(
        f"c0/dispatch: settings changed by the log (since {cell.now_ms}-0): rate_burst=3"
    )


async def test_a_change_breaking_the_rule_between_settings_is_dead_lettered(cell: Cell) -> None:
    await cell.step(session("s1"))
    fresh = await read_settings(cell.client, cell.keys)
    assert (fresh.settings, fresh.since) == (DEFAULTS, None)
    # within bounds one by one, too short an expiry for 3 attempts of 15 s together
    await cell.step(SettingsChanged(settings={"expire_after_ms": 60_000, "rate_burst": 2}))
    (letter,) = await cell.dlq()
    assert letter["reason"].startswith("settings_conflict: expire_after_ms must be 0 or at least")
    assert await read_settings(cell.client, cell.keys) == fresh  # nothing of it applied
    with pytest.raises(ValueError, match="expire_after_ms"):
        await change_settings(cell.client, cell.keys, {"expire_after_ms": 60_000})
    assert len(await cell.stream(cell.keys.log)) == 2  # refused before anything was appended


async def test_the_settings_projection_survives_verify_rebuild_and_record(
    cell: Cell, store_url: str
) -> None:
    await cell.step(node("n1", max_concurrency=8), session("s1"))
    await cell.configure(group_max_utterances=2, rate_burst=20)
    for index in range(5):
        cell.advance(10)
        await cell.step(finalize("s1", index, reason="max_length"))
        await cell.step(ok(f"s1:{index}", 1, "n1"))
    groups = [o["grp"] for o in await cell.outputs("s1")]
    assert groups == ["1", "1", "2", "2", "3"]  # cut after two, as the change says
    report = await verify_cell(cell.client, cell.keys)
    assert report.ok, report.problems
    outputs = await cell.outputs("s1")
    await rebuild_groups(cell.client, cell.keys, holder="test-worker")
    assert await cell.outputs("s1") == outputs  # refolded with the change in its place
    fixture, golden = await record(cell.client, cell.keys, "settings")
    assert sum(isinstance(e, SettingsChanged) for e in map(_event, fixture.entries)) == 1
    assert check(await replay(fixture, store_url, batch=1), golden) is None


def _event(entry: tuple[str, object]) -> object:
    fields = entry[1]
    return decode_event(fields["e"]) if isinstance(fields, dict) else None


async def test_a_running_worker_follows_a_change_from_the_next_decision(
    cell: Cell, store_url: str
) -> None:
    """On the real Redis through ``eventsched settings set``; the embedded store is the
    test's own, so there the library function the command calls."""
    worker = Worker(cell.client, [cell.keys], lease_ms=500, block_ms=20, tick_ms=50)
    stop = anyio.Event()

    async def dispatched_or_rejected(count: int) -> list[dict[str, str]]:
        with anyio.fail_after(20):
            while len(found := [d for d in await cell.decisions() if d["k"] in "dx"]) < count:
                await anyio.sleep(0.01)
        return found

    async with anyio.create_task_group() as group:
        group.start_soon(worker.run, stop)
        await cell.append_live(node("n1", max_concurrency=8), session("s1"), finalize("s1", 0))
        (first,) = await dispatched_or_rejected(1)
        first_ms = int(first["at"].split("-")[0])
        assert (await cell.hash(cell.keys.job("s1:0")))["dl"] == str(first_ms + 15_000)
        if store_url.startswith("memory://"):
            entry_id = await change_settings(
                cell.client, cell.keys, {"job_timeout_ms": 2000, "rate_burst": 1}
            )
        else:
            args = ["settings", "set", "job_timeout_ms=2000", "rate_burst=1", "--wait", "20"]
            args += ["--redis-url", store_url, "--namespace", cell.keys.namespace]
            result = await anyio.to_thread.run_sync(CliRunner().invoke, app, args)
            assert result.exit_code == 0, result.output
            assert "in force" in result.stdout
            entry_id = result.stdout.split()[1].rstrip(":")
        with anyio.fail_after(20):
            while (await read_settings(cell.client, cell.keys)).since != entry_id:
                await anyio.sleep(0.01)
        await cell.append_live(finalize("s1", 1), finalize("s1", 2))
        _, second, third = await dispatched_or_rejected(3)
        stop.set()
    second_ms = int(second["at"].split("-")[0])
    assert (await cell.hash(cell.keys.job("s1:1")))["dl"] == str(second_ms + 2000)
    assert (third["k"], third["reason"]) == ("x", "rate_limited")  # a bucket of one
