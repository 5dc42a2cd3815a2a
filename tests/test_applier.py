"""Validation before the script, dead letters, and the tracking marker."""

from __future__ import annotations

import gc
import json

import anyio
import pytest

from eventsched.dispatch.applier import APPLIER_GROUP, Applier, NotLeader, OutOfOrder
from eventsched.dispatch.worker import Worker, ensure_group
from eventsched.model.events import ENTRY_FIELD, Pool, PoolsConfigured
from eventsched.store.streams import xrange_raw
from tests.harness import Cell, beat, finalize, node, session

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"junk": "x"}, "malformed_entry: expected the single field 'e'"),
        ({ENTRY_FIELD: "{not json"}, "invalid_event: event: json_invalid"),
        (
            {ENTRY_FIELD: json.dumps({"type": "session_opened", "v": 1, "session_id": "s"})},
            "invalid_event: session_opened.src_lang: missing",
        ),
        ({ENTRY_FIELD: "{}", "extra": "1"}, "malformed_entry: expected the single field 'e'"),
    ],
)
async def test_an_invalid_entry_is_dead_lettered_and_the_batch_goes_on(
    cell: Cell, fields: dict[str, str], reason: str
) -> None:
    await cell.append(node("n1"))
    bad_id = await cell.append_fields(fields)
    await cell.append(session("s1"), finalize("s1", 0))
    await cell.apply()
    [dead] = await cell.dlq()
    assert dead["reason"].startswith(reason)
    assert dead["log_id"] == bad_id
    assert {k.removeprefix("f:"): v for k, v in dead.items() if k.startswith("f:")} == fields
    assert [d["node"] for d in await cell.decisions("d")] == ["n1"]
    assert await cell.client.xpending(cell.keys.log, APPLIER_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_entries_at_or_below_the_marker_are_not_applied_twice(cell: Cell) -> None:
    await cell.append(node("n1"), session("s1"), finalize("s1", 0))
    await cell.apply()
    entries = await xrange_raw(cell.client, cell.keys.log)
    result = await Applier(cell.client, cell.keys, holder="test-worker").apply(entries)
    assert (result.applied, result.skipped, result.dead_lettered) == (0, 3, 0)
    assert len(await cell.decisions()) == 1
    assert (await cell.hash(cell.keys.node("n1")))["run"] == "1"
    marker = (await cell.hash(cell.keys.meta))["applied"]
    assert marker == entries[-1][0].decode()


async def test_a_restarted_worker_applies_what_it_read_but_did_not_apply(cell: Cell) -> None:
    await cell.append(node("n1"), session("s1"), finalize("s1", 0))
    await ensure_group(cell.client, cell.keys.log, APPLIER_GROUP)
    # Read as the worker would, then "crash" before applying: the entries stay pending.
    await cell.client.xreadgroup(APPLIER_GROUP, "w1", {cell.keys.log: ">"}, count=10)
    assert (await cell.client.xpending(cell.keys.log, APPLIER_GROUP))["pending"] == 3
    restarted = Worker(cell.client, [cell.keys], name="w1")
    assert await restarted.drain() == 4  # the three entries, then the dispatch decision
    assert [d["node"] for d in await cell.decisions("d")] == ["n1"]
    assert (await cell.client.xpending(cell.keys.log, APPLIER_GROUP))["pending"] == 0


async def test_ids_are_compared_as_numbers_not_strings(cell: Cell) -> None:
    # "9-0" sorts after "10-0" as a string; as an ID it comes first.
    cell.now_ms = 9
    await cell.step(node("n1"))
    cell.now_ms = 10
    await cell.step(session("s1"))
    assert (await cell.hash(cell.keys.meta))["applied"] == "10-0"
    assert (await cell.hash(cell.keys.session("s1")))["src"] == "en"


async def test_calls_are_cut_by_cost_and_apply_every_entry_in_order(cell: Cell) -> None:
    await cell.step(node("n1"), session("s1"))
    await cell.append(*[beat("n1")] * 6, finalize("s1", 0), *[beat("n1")] * 2, finalize("s1", 1))
    entries = await xrange_raw(cell.client, cell.keys.log)
    await cell.client.xreadgroup(APPLIER_GROUP, "test-worker", {cell.keys.log: ">"})
    applier = Applier(cell.client, cell.keys, holder="test-worker")
    # a budget of one finalize: four heartbeats, or what runs up to a finalize
    calls = await applier.apply_in_calls(entries[2:], budget=4)
    assert [c.count for c in calls] == [4, 3, 3]
    assert [len(c.finalize_ms) for c in calls] == [0, 1, 1]
    assert (await cell.hash(cell.keys.meta))["applied"] == entries[-1][0].decode()
    assert [d["job"] for d in await cell.decisions("d")] == ["s1:0", "s1:1"]
    assert (await cell.client.xpending(cell.keys.log, APPLIER_GROUP))["pending"] == 0


async def test_pools_configured_mid_call_are_used_by_the_finalizes_after_them(
    cell: Cell,
) -> None:
    both = PoolsConfigured(pools=[Pool(name="p", languages=["en", "zh"])])
    await cell.step(
        node("n1", max_concurrency=8),
        session("s1"),
        finalize("s1", 0),
        both,
        finalize("s1", 1),
        PoolsConfigured(pools=[]),
        finalize("s1", 2),
    )
    assert [d["pool"] for d in await cell.decisions("d")] == ["auto+en+zh", "p", "auto+en+zh"]


async def test_a_call_sent_ahead_is_refused_until_the_one_before_it_applied(cell: Cell) -> None:
    await cell.step(node("n1"), session("s1"))
    await cell.append(finalize("s1", 0), finalize("s1", 1))
    entries = await xrange_raw(cell.client, cell.keys.log)
    await cell.client.xreadgroup(APPLIER_GROUP, "test-worker", {cell.keys.log: ">"})
    applier = Applier(cell.client, cell.keys, holder="test-worker")
    second = applier.prepare(entries, 3, after=entries[2][0])
    with pytest.raises(OutOfOrder):
        await applier.run(second)  # it overtook the first: nothing applied
    assert await cell.decisions("d") == []
    await applier.run(applier.prepare(entries, 2, budget=4))
    await applier.run(second)
    assert [d["job"] for d in await cell.decisions("d")] == ["s1:0", "s1:1"]


async def test_calls_in_flight_behind_a_refused_one_fail_quietly(
    cell: Cell, caplog: pytest.LogCaptureFixture
) -> None:
    await cell.step(node("n1"), session("s1"))
    await cell.append(*[finalize("s1", i) for i in range(4)])
    entries = await xrange_raw(cell.client, cell.keys.log)
    await cell.client.xreadgroup(APPLIER_GROUP, "test-worker", {cell.keys.log: ">"})
    await cell.client.set(cell.keys.dispatch_lease, "someone-else")
    applier = Applier(cell.client, cell.keys, holder="test-worker")
    with pytest.raises(NotLeader):
        await applier.apply_in_calls(entries[2:], budget=4)
    for _ in range(3):  # let the call behind it finish, and be collected
        await anyio.sleep(0)
    gc.collect()
    assert "never retrieved" not in caplog.text
    assert await cell.decisions("d") == []


async def test_a_call_counts_what_it_dead_lettered(cell: Cell) -> None:
    await cell.append(node("n1"))
    await cell.append_fields({"junk": "x"})
    await cell.append(session("s1"), finalize("s2", 0), finalize("s1", 0))
    entries = await xrange_raw(cell.client, cell.keys.log)
    await ensure_group(cell.client, cell.keys.log, APPLIER_GROUP)
    await cell.client.xreadgroup(APPLIER_GROUP, "test-worker", {cell.keys.log: ">"})
    await cell.client.set(cell.keys.dispatch_lease, "test-worker")
    result = await Applier(cell.client, cell.keys, holder="test-worker").apply(entries)
    # the junk entry (in Python) and the finalize of an unknown session (in the script)
    assert (result.applied, result.dead_lettered) == (5, 2)
    assert len(await cell.dlq()) == 2
