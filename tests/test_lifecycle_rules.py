"""Rules at the edges of a job's and a node's life: results for attempts never issued,
the order of a result's checks, a drain that outlives silence, and why a job failed."""

from __future__ import annotations

import pytest

from eventsched.model.events import NodeDeregistered, NodeDraining, SessionClosed, Tick
from eventsched.model.limits import OUTPUT_MAX_LEN
from eventsched.model.settings import DecisionSettings
from eventsched.ops.verify import verify_cell
from tests.harness import Cell, beat, error, finalize, node, ok, session

pytestmark = pytest.mark.anyio


async def test_a_draining_node_lost_and_back_still_drains(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.configure(node_lost_ms=1000, heartbeat_fresh_ms=60_000)
    await cell.step(node("n1"), session("s1"), NodeDraining(node_id="n1"))
    cell.advance(1001)
    await cell.step(Tick())
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "lost"
    await cell.step(beat("n1"))
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "drain"
    await cell.step(finalize("s1", 0))
    assert [d["reason"] for d in await cell.decisions("x")] == ["no_capacity"]
    # Registering again is a fresh start: it takes work.
    await cell.step(node("n1"), finalize("s1", 1))
    assert [d["idx"] for d in await cell.decisions("d")] == ["1"]


@pytest.mark.parametrize(
    ("attempt", "node_id", "reason"),
    [
        (2, "n1", "unknown_attempt"),  # never issued, from the job's node
        (99, "n1", "unknown_attempt"),
        (2, "n2", "not_owner"),  # a future attempt from another node: who, first
        (1, "n2", "not_owner"),
        (1, "ghost", "unknown_node"),  # never registered, whatever the attempt
        (7, "ghost", "unknown_node"),
    ],
)
async def test_a_result_that_cannot_be_the_jobs_leaves_a_dead_letter(
    cell: Cell, attempt: int, node_id: str, reason: str
) -> None:
    await cell.step(node("n1"), node("n2"), session("s1"), finalize("s1", 0))
    assert (await cell.dispatched_to())["s1:0"] == "n1"
    await cell.step(ok("s1:0", attempt, node_id))
    assert [letter["reason"] for letter in await cell.dlq()] == [reason]
    assert (await cell.hash(cell.keys.job("s1:0")))["st"] == "run"  # nothing changed
    await cell.step(ok("s1:0", 1, "n1"))
    assert [o["st"] for o in await cell.outputs("s1")] == ["ok"]


async def test_late_and_duplicate_results_change_nothing_and_leave_no_letter(cell: Cell) -> None:
    await cell.configure(max_attempts=3)
    await cell.step(node("n1"), node("n2"), session("s1"), finalize("s1", 0))
    await cell.step(error("s1:0", 1, "n1"))  # retried on n2 as attempt 2
    await cell.step(ok("s1:0", 1, "n1"))  # the old attempt's late answer
    await cell.step(ok("s1:0", 2, "n2"), ok("s1:0", 2, "n2"))  # and a duplicate
    assert await cell.dlq() == []
    assert [o["st"] for o in await cell.outputs("s1")] == ["ok"]


# One rule: `reason` says why no further attempt was made (`no_capacity` or `no_pool`
# when no node could take the next one; `retries_exhausted`, `timed_out`, `node_lost`,
# `node_left` when max_attempts were used up), `err` what ended the last attempt.
@pytest.mark.parametrize(
    ("cause", "max_attempts", "reason", "err"),
    [
        ("left", 3, "no_capacity", "NODE_LEFT"),
        ("left", 1, "node_left", "NODE_LEFT"),
        ("late", 3, "no_capacity", "TIMED_OUT"),
        ("late", 1, "timed_out", "TIMED_OUT"),
        ("lost", 3, "no_capacity", "NODE_LOST"),
        ("lost", 1, "node_lost", "NODE_LOST"),
        ("error", 3, "no_capacity", "MODEL_NOT_AVAILABLE"),
        ("error", 1, "retries_exhausted", "MODEL_NOT_AVAILABLE"),
    ],
)
async def test_a_failure_says_why_it_went_no_further_and_what_ended_it(
    cell: Cell, cause: str, max_attempts: int, reason: str, err: str
) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.configure(
        max_attempts=max_attempts, job_timeout_ms=1000, node_lost_ms=2000, heartbeat_fresh_ms=60_000
    )
    await cell.step(node("n1"), session("s1"), finalize("s1", 0))
    if cause == "left":
        await cell.step(NodeDeregistered(node_id="n1"))
    elif cause == "error":
        await cell.step(error("s1:0", 1, "n1"))
    else:
        cell.advance(1001 if cause == "late" else 2001)
        await cell.step(Tick())
    [failed] = await cell.outputs("s1")
    assert (failed["st"], failed["reason"], failed["err"]) == ("failed", reason, err)


async def test_capacity_is_checked_against_the_limit_in_force_at_each_dispatch(
    cell: Cell,
) -> None:
    """A node re-registering with a lower limit does not make the dispatches made under
    the higher one an overcommit (verify compared them with the last limit)."""
    await cell.step(node("n1", max_concurrency=2), session("s1"), session("s2"))
    await cell.step(finalize("s1", 0), finalize("s2", 0))  # 2 running of 2
    await cell.step(node("n1", max_concurrency=1))
    await cell.step(ok("s1:0", 1, "n1"), ok("s2:0", 1, "n1"), finalize("s1", 1))
    report = await verify_cell(cell.client, cell.keys)
    assert report.ok, report.problems
    assert report.figures["max_overcommit"] == 0


async def test_finished_jobs_and_idle_sessions_expire_in_event_time(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    """expire_after_ms after a job finished its record goes; after a session's last
    activity, the session and everything of it goes (sess, utt, out, grp, infl), a
    decision says so, and a later finalize is noticed unknown_session. A session whose
    job is still running does not expire: the job ends first and counts as activity."""
    await cell.configure(job_timeout_ms=1000, max_attempts=1, expire_after_ms=2000)
    client = cell.client
    await cell.step(node("n1", max_concurrency=4), session("s1"), session("s2"))
    await cell.step(finalize("s1", 0), finalize("s2", 0))
    cell.advance(100)
    await cell.step(ok("s1:0", 1, "n1"))
    cell.advance(100)
    await cell.step(SessionClosed(session_id="s1"), beat("n1"))
    cell.advance(2001)  # s1 idle for 2001 ms; s2's job is past its deadline, unseen yet
    await cell.step(beat("n1"), Tick())
    gone = [cell.keys.session("s1"), cell.keys.output("s1"), cell.keys.group("s1")]
    gone += [cell.keys.job("s1:0"), cell.keys.in_flight("s1")]
    assert await client.exists(*gone) == 0
    assert [d["sid"] for d in await cell.decisions("e")] == ["s1"]
    # s2's job timed out in this same tick, which made s2 active: it stays.
    assert await client.exists(cell.keys.session("s2"), cell.keys.job("s2:0")) == 2
    cell.advance(2001)
    await cell.step(beat("n1"), Tick())
    assert [d["sid"] for d in await cell.decisions("e")] == ["s1", "s2"]
    assert await client.exists(cell.keys.session("s2"), cell.keys.job("s2:0")) == 0
    assert await client.zcard(cell.keys.idle) == await client.zcard(cell.keys.ended) == 0
    await cell.step(finalize("s1", 1))
    last = (await cell.decisions())[-1]
    assert (last["k"], last["reason"]) == ("n", "unknown_session")


def test_expiry_must_outlast_every_attempt() -> None:
    with pytest.raises(ValueError, match="expire_after_ms"):
        DecisionSettings(job_timeout_ms=1000, max_attempts=3, expire_after_ms=5999)
    assert DecisionSettings(expire_after_ms=0).expire_after_ms == 0


async def test_an_output_stream_keeps_its_newest_entries(cell: Cell) -> None:
    await cell.step(session("s1"))
    await cell.step(*(finalize("s1", index) for index in range(OUTPUT_MAX_LEN + 5)))
    kept = await cell.outputs("s1")  # no node: each one rejected, each with its outcome
    assert len(kept) == OUTPUT_MAX_LEN
    assert (kept[0]["idx"], kept[-1]["idx"]) == ("5", str(OUTPUT_MAX_LEN + 4))
    report = await verify_cell(cell.client, cell.keys)
    assert report.ok, report.problems


async def test_a_black_hole_node_is_quarantined_after_timeouts_in_a_row(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.configure(
        job_timeout_ms=1000, max_attempts=1, quarantine_after_timeouts=2, quarantine_ms=5000
    )
    await cell.step(node("n1", max_concurrency=4), session("s1"))
    await cell.step(finalize("s1", 0))
    cell.advance(500)
    await cell.step(finalize("s1", 1), beat("n1"))
    cell.advance(600)
    await cell.step(beat("n1"), Tick())  # 0 times out: one strike
    assert await cell.decisions("q") == []
    await cell.step(ok("s1:1", 1, "n1"))  # an answer: the count starts again
    await cell.step(finalize("s1", 2))
    cell.advance(1001)
    await cell.step(beat("n1"), Tick())  # 2 times out: one strike again, not two
    assert await cell.decisions("q") == []
    await cell.step(finalize("s1", 3))
    cell.advance(1001)
    await cell.step(beat("n1"), Tick())  # 3 times out: the second in a row
    [quarantine] = await cell.decisions("q")
    assert (quarantine["node"], int(quarantine["until"])) == ("n1", cell.now_ms + 5000)
    await cell.step(finalize("s1", 4))  # fresh, free, serving the pair, yet offered nothing
    assert (await cell.decisions("x"))[-1]["reason"] == "no_capacity"
    cell.advance(5001)
    await cell.step(beat("n1"), finalize("s1", 5))  # the window is over
    assert (await cell.decisions("d"))[-1]["job"] == "s1:5"


async def test_a_repeat_after_its_job_record_expired_is_still_ignored(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    """The state machine found it: the record of s1:0 expired while s1 lived on, and a
    repeat of 0 was served a second time. The session now keeps a note instead."""
    await cell.configure(job_timeout_ms=1000, max_attempts=1, expire_after_ms=2000)
    await cell.step(node("n1", max_concurrency=4), session("s1"), finalize("s1", 0))
    await cell.step(ok("s1:0", 1, "n1"))
    cell.advance(1500)
    await cell.step(beat("n1"), finalize("s1", 1))  # keeps s1 active
    cell.advance(600)
    await cell.step(beat("n1"), Tick())
    assert await cell.client.exists(cell.keys.job("s1:0")) == 0  # expired
    assert await cell.client.exists(cell.keys.session("s1")) == 1
    await cell.step(finalize("s1", 0))
    assert [d["job"] for d in await cell.decisions("d")] == ["s1:0", "s1:1"]
