"""Operating a cell: verify, rebuild of the group state, dead letters, trimming."""

from __future__ import annotations

import time

import pytest
from redis.exceptions import DataError

from eventsched.dispatch.applier import APPLIER_GROUP
from eventsched.dispatch.retention import (
    acked_bound,
    checkpoint_markers,
    deleted_below,
    retain,
    trim_acknowledged,
    trim_inboxes,
)
from eventsched.model.events import ENTRY_FIELD, Tick
from eventsched.model.keys import INBOX_GROUP
from eventsched.ops import dead_letters as dlq
from eventsched.ops.rebuild import rebuild_groups
from eventsched.ops.replay import check, record, replay
from eventsched.ops.verify import verify_cell
from eventsched.store.client import RedisClient, unlink_matching
from eventsched.store.streams import id_after, xrange_raw, xreadgroup_raw
from tests.conftest import new_namespace
from tests.harness import START_MS, Cell, error, finalize, node, ok, session

pytestmark = pytest.mark.anyio


async def _conversation(cell: Cell) -> None:
    await cell.configure(max_attempts=2)
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
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await _conversation(cell)
    keys = cell.keys
    before = {s: await cell.outputs(s) for s in ("s1", "s2")}
    groups_before = await cell.hash(keys.group("s1"))
    await cell.client.delete(keys.output("s1"), keys.group("s1"))
    folded = await rebuild_groups(cell.client, keys, holder="test-worker")
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
    with pytest.raises(ValueError, match="requeued already"):
        await dlq.requeue(cell.client, cell.keys, letter.dlq_id)
    with pytest.raises(ValueError, match="no dead letter"):
        await dlq.requeue(cell.client, cell.keys, "1-1")


async def test_trimming_keeps_what_any_group_has_not_acknowledged(cell: Cell) -> None:
    await cell.step(node("n1"), session("s1"))
    cell.advance(10_000)
    await cell.step(finalize("s1", 0))
    everything = f"{cell.now_ms + 1_000_000}-0"
    # A second group on the log that has read nothing holds everything back.
    await cell.client.xgroup_create(cell.keys.log, "audit", id="0")
    assert await trim_acknowledged(cell.client, cell.keys.log, everything) == 0
    await cell.client.xgroup_destroy(cell.keys.log, "audit")
    # Pending (read, not acknowledged) entries are kept too.
    cell.advance(10_000)
    await cell.append(finalize("s1", 1))
    await cell.client.xreadgroup(APPLIER_GROUP, "test-worker", {cell.keys.log: ">"})
    pending_id = (await cell.client.xpending(cell.keys.log, APPLIER_GROUP))["min"]
    assert await acked_bound(cell.client, cell.keys.log) == pending_id.decode()
    assert await trim_acknowledged(cell.client, cell.keys.log, f"{START_MS}-1") == 1
    assert await trim_acknowledged(cell.client, cell.keys.log, everything) == 2
    [(remaining_id, _)] = await xrange_raw(cell.client, cell.keys.log)
    assert remaining_id == pending_id
    assert await deleted_below(cell.client, cell.keys, cell.keys.log) is not None


async def test_inboxes_are_trimmed_below_what_their_node_acknowledged(cell: Cell) -> None:
    await cell.step(node("n1", max_concurrency=4), session("s1"))
    await cell.step(*(finalize("s1", index) for index in range(3)), node("n2"))
    inbox = cell.keys.inbox("n1")
    [(_, taken)] = await xreadgroup_raw(cell.client, INBOX_GROUP, "n1", {inbox: ">"}, 10, None)
    [first, second, third] = [entry_id for entry_id, _ in taken]
    await cell.client.xack(inbox, INBOX_GROUP, first, second)  # the third still running
    assert await trim_inboxes(cell.client, cell.keys, 0, 1) == (2, 1)  # a slice: n1 only
    assert [i for i, _ in await xrange_raw(cell.client, inbox)] == [third]
    assert await trim_inboxes(cell.client, cell.keys, 1, 1) == (0, 0)  # n2: nothing; wraps
    report = await verify_cell(cell.client, cell.keys)  # the rest is as the log says
    assert report.ok, report.problems


async def test_retention_trims_below_a_checkpoint_and_recordings_start_after_it(
    cell: Cell,
) -> None:
    await cell.append(node("n1"))
    assert await retain(cell.client, cell.keys, retain_ms=5_000) == 0
    assert await checkpoint_markers(cell.client, cell.keys) == []  # nothing applied yet
    await _conversation(cell)
    assert await retain(cell.client, cell.keys, retain_ms=5_000) == 0  # first checkpoint
    [first] = await checkpoint_markers(cell.client, cell.keys)
    cell.advance(10_000)
    placed = await cell.dispatched_to()
    await cell.step(ok("s1:2", 1, placed["s1:2"]), finalize("s1", 4), Tick())
    removed = await retain(cell.client, cell.keys, retain_ms=5_000)
    log_ids = [entry_id.decode() for entry_id, _ in await xrange_raw(cell.client, cell.keys.log)]
    assert removed > 0 and id_after(log_ids[0], first)
    assert len(await checkpoint_markers(cell.client, cell.keys)) == 2
    # What was trimmed is covered: verify refuses, a recording starts after the checkpoint.
    assert "trimmed" in (await verify_cell(cell.client, cell.keys)).problems[0]
    with pytest.raises(ValueError, match="trimmed"):
        await record(cell.client, cell.keys, "all")
    with pytest.raises(ValueError, match="decisions stream was trimmed"):
        await rebuild_groups(cell.client, cell.keys, holder="test-worker")
    fixture, golden = await record(cell.client, cell.keys, "tail", since=log_ids[0])
    assert fixture.snapshot and fixture.entries[0][0] == log_ids[1]
    assert check(await replay(fixture), golden) is None


async def test_unlink_matching_removes_every_match_a_page_at_a_time(client: RedisClient) -> None:
    namespace = new_namespace()
    async with client.pipeline(transaction=False) as pipe:
        for index in range(1201):
            pipe.set(f"{namespace}:{{c0}}:k{index}", index)
        pipe.set(f"{namespace}x:{{c0}}:other", 1)
        await pipe.execute()
    try:
        assert await unlink_matching(client, f"{namespace}:*", page=500) == 1201
        assert [k async for k in client.scan_iter(match=f"{namespace}:*")] == []
        assert await client.exists(f"{namespace}x:{{c0}}:other") == 1
    finally:
        await client.delete(f"{namespace}x:{{c0}}:other")


async def test_commands_hiredis_will_not_pack_fail_as_redis_py_says(client: RedisClient) -> None:
    key = f"{new_namespace()}:{{c0}}:k"
    with pytest.raises(DataError, match="Invalid input of type: 'bool'"):
        await client.set(key, True)
    await client.set(key, "é")  # utf-8, as redis-py encodes it
    try:
        assert await client.get(key) == "é".encode()
    finally:
        await client.delete(key)


async def test_a_rebuild_refuses_while_a_worker_holds_the_groups_role(cell: Cell) -> None:
    await _conversation(cell)
    before = await cell.outputs("s1")
    await cell.client.set(cell.keys.lease("groups"), "test-worker", px=60_000)  # running
    with pytest.raises(ValueError, match="worker test-worker holds the groups role of c0"):
        await rebuild_groups(cell.client, cell.keys, holder="operator")
    assert await cell.outputs("s1") == before  # nothing was touched
    await cell.client.delete(cell.keys.lease("groups"))  # the worker stopped
    assert await rebuild_groups(cell.client, cell.keys, holder="operator") > 0
    assert not await cell.client.exists(cell.keys.lease("groups"))  # given back
