"""Time as events: ticks at chosen event times drive deadlines, node liveness and the
MODEL_NOT_AVAILABLE window, deterministically."""

from __future__ import annotations

import pytest

from eventsched.model.events import NodeDraining, Tick
from eventsched.store.streams import text
from tests.harness import Cell, beat, error, finalize, node, ok, session

pytestmark = pytest.mark.anyio


async def test_a_job_past_its_deadline_is_retried_elsewhere(cell: Cell) -> None:
    await cell.configure(job_timeout_ms=1000, heartbeat_fresh_ms=60_000, node_lost_ms=60_000)
    await cell.step(node("n1"), node("n2"), session("s1"))
    await cell.step(finalize("s1", 0))
    cell.advance(1000)
    await cell.step(Tick())  # at the deadline, not past it
    assert len(await cell.decisions("d")) == 1
    cell.advance(1)
    await cell.step(Tick())
    release = (await cell.decisions("r"))[0]
    assert (release["node"], release["err"]) == ("n1", "TIMED_OUT")
    assert [(d["att"], d["node"]) for d in await cell.decisions("d")] == [("1", "n1"), ("2", "n2")]
    job = await cell.hash(cell.keys.job("s1:0"))
    assert int(job["dl"]) == cell.now_ms + 1000
    # The late answer of the first attempt changes nothing.
    await cell.step(ok("s1:0", 1, "n1"))
    assert await cell.outputs("s1") == []


async def test_a_job_that_keeps_timing_out_fails_as_timed_out(cell: Cell) -> None:
    await cell.configure(job_timeout_ms=500, max_attempts=2, node_lost_ms=60_000)
    await cell.step(node("n1"), node("n2"), session("s1"))
    await cell.step(finalize("s1", 0))
    for _ in range(2):
        cell.advance(501)
        await cell.step(Tick())
    [delivered] = await cell.outputs("s1")
    assert (delivered["st"], delivered["reason"], delivered["err"], delivered["att"]) == (
        "failed",
        "timed_out",
        "TIMED_OUT",
        "2",
    )
    assert await cell.client.zcard(cell.keys.deadlines) == 0
    for node_id in ("n1", "n2"):
        assert (await cell.hash(cell.keys.node(node_id)))["run"] == "0"


async def test_a_silent_node_is_lost_and_its_jobs_move_at_once(cell: Cell) -> None:
    await cell.configure(node_lost_ms=5000, heartbeat_fresh_ms=3000, job_timeout_ms=60_000)
    await cell.step(node("n1"), session("s1"), session("s2"))
    await cell.step(finalize("s1", 0))
    cell.advance(2000)
    await cell.step(node("n2"))
    cell.advance(3000)
    await cell.step(beat("n2"), Tick())  # n1 silent for exactly 5000 ms: not yet
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "up"
    cell.advance(1)
    await cell.step(Tick())
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "lost"
    [lost] = await cell.decisions("l")
    assert lost["node"] == "n1"
    assert [(d["att"], d["node"]) for d in await cell.decisions("d")] == [("1", "n1"), ("2", "n2")]
    assert (await cell.decisions("r"))[0]["err"] == "NODE_LOST"
    # A lost node gets no work until it beats again, even once its beat would be fresh.
    await cell.step(finalize("s2", 0))
    assert (await cell.decisions())[-1]["node"] == "n2"
    await cell.step(beat("n1"))
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "up"
    await cell.step(finalize("s2", 1))
    assert (await cell.decisions())[-1]["node"] == "n1"


async def test_a_lost_node_with_nowhere_to_move_fails_its_jobs_as_node_lost(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.configure(node_lost_ms=1000, max_attempts=3)
    await cell.step(node("n1"), session("s1"))
    await cell.step(finalize("s1", 0))
    cell.advance(1001)
    await cell.step(Tick())
    [delivered] = await cell.outputs("s1")
    assert (delivered["st"], delivered["reason"], delivered["err"]) == (
        "failed",
        "no_capacity",
        "NODE_LOST",
    )


async def test_a_draining_node_that_goes_silent_is_lost_too(cell: Cell) -> None:
    await cell.configure(node_lost_ms=1000)
    await cell.step(node("n1"), NodeDraining(node_id="n1"))
    cell.advance(1001)
    await cell.step(Tick())
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "lost"


async def test_model_not_available_keeps_the_pair_off_the_node_for_a_window(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.configure(
        unavailable_window_ms=10_000, heartbeat_fresh_ms=60_000, node_lost_ms=60_000
    )
    await cell.step(
        node("n1", langs=("en", "ja", "zh"), max_concurrency=8),
        node("n2", langs=("en", "ja", "zh"), max_concurrency=1),
        session("s1"),
        session("s2"),
        session("s3", "en", "ja"),
    )
    await cell.step(finalize("s1", 0), finalize("s2", 0), finalize("s2", 1))
    # n1 has s1:0 and s2:1 (n2 is full with s2:0); both answer MODEL_NOT_AVAILABLE.
    assert (await cell.dispatched_to())["s2:1"] == "n1"
    await cell.step(ok("s2:0", 1, "n2"))
    await cell.step(error("s1:0", 1, "n1"), error("s2:1", 1, "n1"))
    windows = await cell.decisions("m")
    assert [(m["node"], m["pair"]) for m in windows] == [("n1", "en>zh")]  # one per storm
    # en>zh goes to n2 only, though n1 is less loaded; en>ja still goes to n1.
    await cell.step(ok("s1:0", 2, "n2"))
    await cell.step(finalize("s1", 1), finalize("s3", 0))
    placed = await cell.dispatched_to()
    assert (placed["s1:1"], placed["s3:0"]) == ("n2", "n1")
    cell.advance(10_000)  # the window has passed
    await cell.step(ok("s1:1", 1, "n2"), ok("s3:0", 1, "n1"), finalize("s1", 2))
    assert (await cell.dispatched_to())["s1:2"] == "n1"
    await cell.step(error("s1:2", 1, "n1"))
    assert len(await cell.decisions("m")) == 2  # a new window, a new entry


async def test_a_registered_node_has_an_inbox_consumer_group(cell: Cell) -> None:
    await cell.step(node("n1"), node("n1"))
    groups = await cell.client.xinfo_groups(cell.keys.inbox("n1"))
    assert [text(g["name"]) for g in groups] == ["node"]


def test_lifecycle_lines_name_the_job_and_keep_storms_quiet() -> None:
    import logging

    from eventsched.dispatch.job_log import describe

    level, line = describe(
        {"k": "d", "job": "s1:0", "att": "2", "node": "n3", "sid": "s1", "idx": "0", "at": "5-0"}
    )
    assert level == logging.DEBUG
    assert line == "step=retried job=s1:0 session=s1 utterance=0 attempt=2 node=n3 log_id=5-0"
    assert describe({"k": "m", "node": "n1", "pair": "en>zh", "until": "9"})[0] == logging.INFO
    assert describe({"k": "o", "job": "s1:0"})[0] == logging.DEBUG


# Event times of 15 digits and more: Lua's own number-to-text has 14 significant digits.
FAR_MS = [123_456_789_012_345, 2**48 - 10_000_000]


@pytest.mark.parametrize("start_ms", FAR_MS)
async def test_deadlines_are_exact_at_far_event_times(cell: Cell, start_ms: int) -> None:
    cell.now_ms = start_ms
    await cell.configure(job_timeout_ms=1000, heartbeat_fresh_ms=60_000, node_lost_ms=60_000)
    await cell.step(node("n1"), node("n2"), session("s1"))
    await cell.step(finalize("s1", 0))
    assert int((await cell.hash(cell.keys.job("s1:0")))["dl"]) == cell.now_ms + 1000
    for late_by, dispatches in ((-3, 1), (0, 1), (1, 2)):
        cell.now_ms = start_ms + 1000 + late_by
        await cell.step(Tick())
        assert len(await cell.decisions("d")) == dispatches, late_by


@pytest.mark.parametrize("start_ms", FAR_MS)
async def test_liveness_is_exact_at_far_event_times(cell: Cell, start_ms: int) -> None:
    cell.now_ms = start_ms
    await cell.configure(node_lost_ms=5000, heartbeat_fresh_ms=3000)
    await cell.step(node("n1"))
    for silent_ms, state in ((4999, "up"), (5000, "up"), (5001, "lost")):
        cell.now_ms = start_ms + silent_ms
        await cell.step(Tick())
        assert (await cell.hash(cell.keys.node("n1")))["st"] == state, silent_ms
