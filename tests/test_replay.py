"""Replay: every fixture reproduces its golden, byte for byte, on every backend, at any
batch size; a recorded live run replays to what it did live."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventsched.model.keys import CellKeys
from eventsched.ops.replay import FixtureError, check, golden_path, load_fixture, record, replay
from eventsched.sim.demo import run_demo
from eventsched.sim.loadgen import LoadSpec
from eventsched.store.client import Store
from tests.conftest import new_namespace, remove_namespace

pytestmark = pytest.mark.anyio

FIXTURES = sorted((Path(__file__).parent.parent / "replay_fixtures").glob("*.jsonl"))
# A short live run to record: quick pauses, no node deaths.
LIVE = LoadSpec(
    nodes=5,
    sessions=6,
    utterances=4,
    gap_ms=(5, 20),
    service_ms=(5, 20),
    heartbeat_ms=100,
    mortal_share=0,
)


def test_there_are_at_least_fourteen_named_fixtures() -> None:
    assert len(FIXTURES) >= 14
    for path in FIXTURES:
        fixture = load_fixture(path)
        assert fixture.comments, f"{path.name} says what it shows"
        assert golden_path(path).exists()


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
async def test_each_fixture_reproduces_its_golden(store_url: str, path: Path) -> None:
    result = await replay(load_fixture(path), store_url)
    assert check(result, golden_path(path).read_text(encoding="utf-8")) is None


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
async def test_replays_are_identical_again_and_at_any_batch_size(
    store_url: str, path: Path
) -> None:
    fixture = load_fixture(path)
    golden = golden_path(path).read_text(encoding="utf-8")
    for size in (1, 500, 1):
        assert check(await replay(fixture, store_url, batch=size), golden) is None, size


async def test_a_changed_rule_fails_with_a_readable_diff() -> None:
    path = next(p for p in FIXTURES if "rate_limit" in p.stem)
    fixture = load_fixture(path)
    fixture.settings = fixture.settings.model_copy(update={"rate_burst": 5})
    problem = check(await replay(fixture), golden_path(path).read_text(encoding="utf-8"))
    assert problem is not None
    lines = problem.splitlines()
    assert lines[0] == "--- golden" and lines[1] == "+++ replayed"
    assert any(line.startswith("-") and "rate_limited" in line for line in lines[2:])
    assert len(lines) <= 24


async def test_a_recorded_live_run_replays_to_what_it_did(store_url: str, tmp_path: Path) -> None:
    namespace = new_namespace()
    keys = CellKeys("c0", namespace)
    store = Store(store_url)
    client = store.client()
    try:
        await run_demo(store, keys, LIVE)
        fixture, golden = await record(client, keys, "recorded", ["a test recording"])
    finally:
        await remove_namespace(client, namespace)
        await client.aclose()
    path = tmp_path / "recorded.jsonl"
    path.write_text(fixture.to_text(), encoding="utf-8")
    reloaded = load_fixture(path)
    assert reloaded.entries == fixture.entries and reloaded.settings == fixture.settings
    assert len(reloaded.entries) > LIVE.sessions * LIVE.utterances
    assert check(await replay(reloaded), golden) is None
    assert check(await replay(reloaded, store_url, batch=7), golden) is None


async def test_recordings_can_start_from_a_snapshot_and_stop_early(
    store_url: str, tmp_path: Path
) -> None:
    namespace = new_namespace()
    keys = CellKeys("c0", namespace)
    store = Store(store_url)
    client = store.client()
    try:
        await run_demo(store, keys, LIVE)
        whole, _ = await record(client, keys, "whole")
        ids = [entry_id for entry_id, _ in whole.entries]
        since, until = ids[len(ids) // 3], ids[2 * len(ids) // 3]
        recordings = [
            await record(client, keys, "tail", since=since),
            await record(client, keys, "head", until=until),
            await record(client, keys, "middle", since=since, until=until),
        ]
    finally:
        await remove_namespace(client, namespace)
        await client.aclose()
    tail, head, middle = (fixture for fixture, _ in recordings)
    assert tail.snapshot and tail.entries[0][0] == ids[len(ids) // 3 + 1] and tail.with_state
    assert head.entries[-1][0] == until and not head.snapshot and not head.with_state
    assert middle.snapshot and middle.entries[-1][0] == until
    for fixture, golden in recordings:
        assert check(await replay(fixture, store_url), golden) is None, fixture.name
    path = tmp_path / "middle.jsonl"
    path.write_text(middle.to_text(), encoding="utf-8")
    reloaded = load_fixture(path)
    assert (reloaded.snapshot, reloaded.entries) == (middle.snapshot, middle.entries)
    assert check(await replay(reloaded), recordings[2][1]) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no header line"),
        ('{"format": "other"}\n', "the first line must be the header"),
        ('{"format": "eventsched-replay/1"}\n{"t": 5}\n', "line 2: needs 'event'"),
        ('{"format": "eventsched-replay/1"}\n{"t": 5, "raw": {}}\n', "line 2: needs 'event'"),
        ('{"format": "eventsched-replay/1"}\n{"event": {}}\n', "line 2: needs a positive"),
        ('{"format": "eventsched-replay/1"}\nnope\n', "line 2: not JSON"),
        (
            '{"format": "eventsched-replay/1"}\n'
            '{"t": 9, "raw": {"a": 1}}\n{"t": 8, "raw": {"a": 1}}\n',
            "line 3: times must increase",
        ),
    ],
)
def test_a_bad_fixture_is_named_with_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FixtureError, match=message):
        load_fixture(path)
