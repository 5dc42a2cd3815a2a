"""The bounded wait for a slot (lua/queue.lua): a finalize or a retry that finds no free
slot waits in its language pair's queue, retries first and then oldest first, for
queue_wait_ms at most and queue_max per pair, and is placed by the same steps as any
finalize when a slot frees, a node joins or beats again, or a tick comes."""

from __future__ import annotations

import pytest

from eventsched.model.events import SessionClosed, Tick
from eventsched.ops.inspection import job_detail
from eventsched.projections.stats import StatsBuilder
from tests.harness import Cell, beat, error, finalize, node, ok, session

pytestmark = pytest.mark.anyio


async def _kinds(cell: Cell) -> list[tuple[str, str]]:
    """(kind, job or session:index) of every dispatch, wait, rejection and failure."""
    return [
        (d["k"], d.get("job") or f"{d['sid']}:{d['idx']}")
        for d in await cell.decisions()
        if d["k"] in ("d", "w", "x", "f")
    ]


async def _nothing_waits(cell: Cell) -> None:
    for key in (cell.keys.queued, cell.keys.waits, cell.keys.queue("en>zh")):
        assert not await cell.client.exists(key), key


async def test_a_finalize_with_no_free_slot_waits_and_takes_the_next_one(cell: Cell) -> None:
    await cell.step(node("n1", max_concurrency=1), session("s1"), session("s2"))
    await cell.step(finalize("s1", 0), finalize("s2", 0))
    [waiting] = await cell.decisions("w")
    assert (waiting["job"], waiting["att"], waiting["pair"]) == ("s2:0", "1", "en>zh")
    assert waiting["until"] == str(cell.now_ms + cell.settings.queue_wait_ms)
    shown = await job_detail(cell.client, cell.keys, "s2:0")
    assert shown is not None
    assert (shown["state"], shown["waiting_since_ms"], shown["waited_ms"]) == (
        "waiting",
        cell.now_ms,
        None,
    )
    cell.advance(120)
    await cell.step(ok("s1:0", 1, "n1"))  # the slot frees: the waiting one takes it at once
    assert await _kinds(cell) == [("d", "s1:0"), ("w", "s2:0"), ("d", "s2:0")]
    dispatched = (await cell.decisions("d"))[-1]
    assert (dispatched["node"], dispatched["waited"]) == ("n1", "120")
    record = await cell.hash(cell.keys.job("s2:0"))
    assert (record["st"], record["waited"], record["att"]) == ("run", "120", "1")
    assert "qatt" not in record and (await cell.hash(cell.keys.node("n1")))["run"] == "1"
    shown = await job_detail(cell.client, cell.keys, "s2:0")
    assert shown is not None
    assert (shown["state"], shown["waiting_since_ms"], shown["waited_ms"]) == ("running", None, 120)
    assert [step["k"] for step in shown["lineage"]] == ["w", "d"]
    await _nothing_waits(cell)


async def test_statistics_count_waits_and_show_each_queue(cell: Cell) -> None:
    await cell.step(node("n1", max_concurrency=1), session("s1"), session("s2"), session("s3"))
    await cell.step(finalize("s1", 0), finalize("s2", 0), finalize("s3", 0))
    cell.advance(30)
    await cell.step(ok("s1:0", 1, "n1"))  # s2:0 placed after 30 ms; s3:0 still waits
    builder = StatsBuilder()
    for decision in await cell.decisions():
        builder.decision(decision)
    snapshot = await builder.publish(cell.client, cell.keys, cell.now_ms)
    assert snapshot["counts"]["queued"] == 2 and snapshot["wait_p99_ms"] == 50  # (20, 50]
    assert snapshot["queues"] == {"en>zh": {"waiting": 1, "wait_p50_ms": 50, "wait_p99_ms": 50}}


async def test_retries_go_first_then_the_oldest_and_a_retry_keeps_off_its_node(cell: Cell) -> None:
    await cell.step(node("n1", max_concurrency=1), node("n2", max_concurrency=1))
    await cell.step(*(session(f"s{i}") for i in range(1, 5)))
    await cell.step(finalize("s1", 0), finalize("s2", 0))  # s1 on n1, s2 on n2
    cell.advance(10)
    await cell.step(finalize("s3", 0))
    cell.advance(10)
    await cell.step(finalize("s4", 0))  # s3 and s4 wait, in that order
    cell.advance(10)
    # n1 fails s1:0: its retry may not go back to n1, so it waits (ahead of s3 and s4),
    # and n1's freed slot goes to the oldest first attempt, s3
    await cell.step(error("s1:0", 1, "n1", code="HANDLER_ERROR"))
    cell.advance(10)
    await cell.step(ok("s2:0", 1, "n2"))  # n2 frees: the retry jumps s4
    assert await _kinds(cell) == [
        ("d", "s1:0"),
        ("d", "s2:0"),
        ("w", "s3:0"),
        ("w", "s4:0"),
        ("w", "s1:0"),
        ("d", "s3:0"),
        ("d", "s1:0"),
    ]
    retry = (await cell.decisions("d"))[-1]
    assert (retry["att"], retry["node"], retry["waited"]) == ("2", "n2", "10")
    assert (await cell.hash(cell.keys.queued)) == {"en>zh": "1"}  # s4 still waits


async def test_a_wait_past_queue_wait_ms_ends_queue_timeout_in_order(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=300)
    await cell.step(node("n1", max_concurrency=1), session("s1"))
    await cell.step(finalize("s1", 0), finalize("s1", 1), finalize("s1", 2))
    cell.advance(300)
    await cell.step(Tick())  # exactly at the end of the wait: still waiting
    assert not await cell.decisions("x")
    cell.advance(1)
    await cell.step(Tick())
    assert [(d["idx"], d["reason"]) for d in await cell.decisions("x")] == [
        ("1", "queue_timeout"),
        ("2", "queue_timeout"),
    ]
    assert not await cell.outputs("s1")  # held behind utterance 0, which still runs
    await cell.step(ok("s1:0", 1, "n1"))
    outputs = [(o["idx"], o["st"], o["reason"]) for o in await cell.outputs("s1")]
    assert outputs == [
        ("0", "ok", ""),
        ("1", "rejected", "queue_timeout"),
        ("2", "rejected", "queue_timeout"),
    ]
    assert not await cell.client.exists(cell.keys.job("s1:1"))
    await cell.step(finalize("s1", 1))  # a repeat of a rejected utterance is ignored
    assert len(await cell.decisions("x")) == 2
    await _nothing_waits(cell)


async def test_a_slot_freed_after_the_wait_ended_does_not_revive_it(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=300)
    await cell.step(node("n1", max_concurrency=1), session("s1"), session("s2"))
    await cell.step(finalize("s1", 0), finalize("s2", 0))
    cell.advance(301)
    await cell.step(ok("s1:0", 1, "n1"))  # before any tick: the wait is over all the same
    assert await _kinds(cell) == [("d", "s1:0"), ("w", "s2:0"), ("x", "s2:0")]
    assert (await cell.decisions("x"))[0]["reason"] == "queue_timeout"


async def test_a_full_queue_rejects_queue_full_and_queue_max_is_per_pair(cell: Cell) -> None:
    await cell.configure(queue_max=1)
    await cell.step(
        node("n1", max_concurrency=1), node("n2", langs=("en", "ja"), max_concurrency=1)
    )
    await cell.step(session("s1"), session("s2"), session("s3"), session("j1", tgt="ja"))
    await cell.step(finalize("s1", 0), finalize("s2", 0), finalize("s3", 0))
    await cell.step(finalize("j1", 0), finalize("j1", 1))  # another pair's queue
    assert await _kinds(cell) == [
        ("d", "s1:0"),
        ("w", "s2:0"),
        ("x", "s3:0"),
        ("d", "j1:0"),
        ("w", "j1:1"),
    ]
    assert (await cell.decisions("x"))[0]["reason"] == "queue_full"
    assert await cell.hash(cell.keys.queued) == {"en>zh": "1", "en>ja": "1"}


async def test_queue_wait_ms_zero_rejects_at_once(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)
    await cell.step(node("n1", max_concurrency=1), session("s1"))
    await cell.step(finalize("s1", 0), finalize("s1", 1))
    assert await _kinds(cell) == [("d", "s1:0"), ("x", "s1:1")]
    assert (await cell.decisions("x"))[0]["reason"] == "no_capacity"


async def test_a_session_closed_while_it_waits_ends_its_waiting_finalizes(cell: Cell) -> None:
    await cell.step(node("n1", max_concurrency=1), session("s1"), session("s2"))
    await cell.step(finalize("s2", 0), finalize("s1", 0), finalize("s1", 1))
    await cell.step(SessionClosed(session_id="s1"))
    assert [(d["idx"], d["reason"]) for d in await cell.decisions("x")] == [
        ("0", "session_closed"),
        ("1", "session_closed"),
    ]
    assert [(o["idx"], o["reason"]) for o in await cell.outputs("s1")] == [
        ("0", "session_closed"),
        ("1", "session_closed"),
    ]
    await _nothing_waits(cell)


async def test_a_waiting_retry_that_gets_no_slot_fails_with_its_error(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=300)
    await cell.step(node("n1", max_concurrency=1), session("s1"))
    await cell.step(finalize("s1", 0))
    await cell.step(error("s1:0", 1, "n1", code="HANDLER_ERROR"))  # only n1: the retry waits
    [waiting] = await cell.decisions("w")
    assert (waiting["job"], waiting["att"]) == ("s1:0", "2")
    await cell.step(ok("s1:0", 1, "n1"))  # a late answer of the ended attempt: nothing
    cell.advance(301)
    await cell.step(Tick())
    [failure] = await cell.decisions("f")
    assert (failure["att"], failure["node"], failure["reason"], failure["err"]) == (
        "1",
        "n1",
        "queue_timeout",
        "HANDLER_ERROR",
    )
    assert (await cell.hash(cell.keys.job("s1:0")))["st"] == "failed"
    [delivered] = await cell.outputs("s1")
    assert (delivered["st"], delivered["reason"]) == ("failed", "queue_timeout")


async def test_a_node_joining_or_beating_again_serves_what_waits(cell: Cell) -> None:
    await cell.configure(heartbeat_fresh_ms=1000, node_lost_ms=60_000)
    await cell.step(node("n1", max_concurrency=1), session("s1"), session("s2"), session("s3"))
    await cell.step(finalize("s1", 0), finalize("s2", 0))
    cell.advance(100)
    await cell.step(node("n2", max_concurrency=1))  # joins: s2:0 goes there
    assert (await cell.decisions("d"))[-1]["job"] == "s2:0"
    cell.advance(1000)
    await cell.step(beat("n1"), ok("s1:0", 1, "n1"), ok("s2:0", 1, "n2"))
    cell.advance(1001)  # both silent past freshness: a finalize finds nobody to take it
    await cell.step(finalize("s3", 0))
    assert (await cell.decisions())[-1]["k"] == "w"
    await cell.step(beat("n2"))  # n2 beats again: s3:0 is placed at the beat
    dispatched = (await cell.decisions())[-1]
    assert (dispatched["k"], dispatched["job"], dispatched["node"]) == ("d", "s3:0", "n2")


async def test_waiting_keeps_the_rate_limit_and_ignores_repeats(cell: Cell) -> None:
    await cell.configure(rate_burst=2)
    await cell.step(node("n1", max_concurrency=1), session("s1"))
    await cell.step(finalize("s1", 0), finalize("s1", 1), finalize("s1", 1), finalize("s1", 2))
    # the repeat of the waiting utterance 1 is ignored; 2 finds the bucket empty
    assert await _kinds(cell) == [("d", "s1:0"), ("w", "s1:1"), ("x", "s1:2")]
    assert (await cell.decisions("x"))[0]["reason"] == "rate_limited"


async def test_a_session_with_a_job_waiting_never_expires_however_late_the_tick(
    cell: Cell,
) -> None:
    """The tick that finds a deadline long past puts the retry in the queue and then
    expires what is idle: the session must stay while its job waits (the script needs
    it to place the job), and expires once nothing of it is left."""
    await cell.configure(
        max_attempts=2, job_timeout_ms=3000, queue_wait_ms=1000, expire_after_ms=16_000
    )
    await cell.step(node("n1", max_concurrency=1), session("s1"))
    await cell.step(finalize("s1", 0))
    cell.advance(16_001)  # no tick meanwhile: the deadline and the expiry are both past
    await cell.step(Tick())
    assert [d["k"] for d in await cell.decisions()][-2:] == ["r", "w"]  # the retry waits
    assert not await cell.dlq() and await cell.client.exists(cell.keys.session("s1"))
    cell.advance(1001)
    await cell.step(Tick())  # its wait ends: it fails, and the session may go later
    [failure] = await cell.decisions("f")
    assert (failure["reason"], failure["err"]) == ("queue_timeout", "NODE_LOST")  # lost first
    cell.advance(16_001)
    await cell.step(Tick())
    assert (await cell.decisions())[-1]["k"] == "e"
