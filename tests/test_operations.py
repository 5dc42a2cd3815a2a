"""Operating a cell: verify, rebuild of the group state, dead letters, trimming."""

from __future__ import annotations

import time

import pytest

from eventsched import dlq
from eventsched.applier import APPLIER_GROUP
from eventsched.events import ENTRY_FIELD, Tick
from eventsched.rebuild import rebuild_groups
from eventsched.retention import acked_bound, trim_acknowledged
from eventsched.streams import xrange_raw
from eventsched.verify import verify_cell
from tests.harness import Cell, error, finalize, node, ok, session

pytestmark = pytest.mark.anyio


async def _conversation(cell: Cell) -> None:
    cell.configure(max_attempts=2)
    await cell.step(node("n1", max_concurrency=4), node("n2"), session("s1"), session("s2"))
    for index in range(4):
        cell.advance(150)
        await cell.step(finalize("s1", index, "max_length"), finalize("s2", index))
    cell.advance(50)
    placed = await cell.dispatched_to()
    await cell.step(
        ok("s1:1", 1, placed["s1:1"], tts_ms=300),
        error("s2:0", 1, placed["s2:0"]),
        ok("s1:0", 1, placed["s1:0"]),
    )
    await cell.append_fields({"junk": "1"})
    await cell.step(Tick())


async def test_verify_passes_on_a_consistent_cell_and_catches_tampering(cell: Cell) -> None:
    await _conversation(cell)
    report = await verify_cell(cell.client, cell.keys)
    assert report.ok, report.problems
    assert report.figures["sessions"] == 2 and report.figures["finalized"] == 8
    await cell.client.hset(cell.keys.node("n1"), "run", 99)
    await cell.client.xadd(cell.keys.output("s2"), {"idx": "9", "st": "ok"}, id="0-99")
    report = await verify_cell(cell.client, cell.keys)
    assert not report.ok
    assert "node:n1: differs from the rebuild" in report.problems
    assert any(p.startswith("out:s2") for p in report.problems)


async def test_verify_refuses_a_trimmed_log(cell: Cell) -> None:
    await _conversation(cell)
    first = (await xrange_raw(cell.client, cell.keys.log, count=1))[0][0]
    await cell.client.xdel(cell.keys.log, first)
    report = await verify_cell(cell.client, cell.keys)
    if report.ok:  # fakeredis does not count entries-added; Redis 7 does
        pytest.skip("this backend cannot tell a trimmed stream")
    assert "trimmed" in report.problems[0]


async def test_rebuilding_the_group_state_gives_the_same_outputs(cell: Cell) -> None:
    await _conversation(cell)
    keys = cell.keys
    before = {s: await cell.outputs(s) for s in ("s1", "s2")}
    groups_before = await cell.hash(keys.group("s1"))
    await cell.client.delete(keys.output("s1"), keys.group("s1"))
    folded = await rebuild_groups(cell.client, keys, cell.settings, holder="test-worker")
    assert folded == len(await cell.decisions())
    assert {s: await cell.outputs(s) for s in ("s1", "s2")} == before
    assert await cell.hash(keys.group("s1")) == groups_before
    # The cell goes on afterwards: later results are still delivered.
    await cell.step(ok("s1:2", 1, (await cell.dispatched_to())["s1:2"]))
    assert [o["idx"] for o in await cell.outputs("s1")] == ["0", "1", "2", "3"]  # 3: rejected


async def test_dead_letters_can_be_listed_shown_and_requeued(cell: Cell) -> None:
    # The requeued entry gets a live ID (the server's clock): start the clock there.
    cell.now_ms = int(time.time() * 1000)
    await cell.step(node("n1"))
    await cell.step(finalize("s1", 0))  # no such session yet: dead-lettered
    [letter] = await dlq.list_dead(cell.client, cell.keys)
    assert letter.reason == "unknown_session" and ENTRY_FIELD in letter.fields
    assert await dlq.find(cell.client, cell.keys, letter.dlq_id) == letter
    await cell.step(session("s1"))
    await dlq.requeue(cell.client, cell.keys, letter.dlq_id)
    await cell.apply()
    assert await dlq.list_dead(cell.client, cell.keys) == []
    assert [d["job"] for d in await cell.decisions("d")] == ["s1:0"]
    with pytest.raises(ValueError, match="no dead letter"):
        await dlq.requeue(cell.client, cell.keys, letter.dlq_id)


async def test_trimming_keeps_what_any_group_has_not_acknowledged(cell: Cell) -> None:
    await cell.step(node("n1"), session("s1"))
    cell.advance(10_000)
    await cell.step(finalize("s1", 0))
    # A second group on the log that has read nothing holds everything back.
    await cell.client.xgroup_create(cell.keys.log, "audit", id="0")
    assert await trim_acknowledged(cell.client, cell.keys.log, retain_ms=0) == 0
    await cell.client.xgroup_destroy(cell.keys.log, "audit")
    # Pending (read, not acknowledged) entries are kept too.
    cell.advance(10_000)
    await cell.append(finalize("s1", 1))
    await cell.client.xreadgroup(APPLIER_GROUP, "test-worker", {cell.keys.log: ">"})
    pending_id = (await cell.client.xpending(cell.keys.log, APPLIER_GROUP))["min"]
    assert await acked_bound(cell.client, cell.keys.log) == pending_id.decode()
    # Within the retention window nothing goes; beyond it, acknowledged entries do,
    # and the pending one stays whatever the window.
    assert await trim_acknowledged(cell.client, cell.keys.log, retain_ms=60_000) == 0
    assert await trim_acknowledged(cell.client, cell.keys.log, retain_ms=5_000) == 3
    assert await trim_acknowledged(cell.client, cell.keys.log, retain_ms=0) == 0
    [(remaining_id, _)] = await xrange_raw(cell.client, cell.keys.log)
    assert remaining_id == pending_id
