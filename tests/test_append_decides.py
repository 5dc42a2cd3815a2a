"""A trusted producer's event decided in its own append's script call, on both stores:
at the log's tip while a worker holds the dispatch role, and otherwise left in the log
for the worker, in order; what is decided at append is what the worker would decide
(verify refolds the live log and compares), and a node's result acknowledges its job in
the same call."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventsched.model.events import Event, SettingsChanged
from eventsched.model.keys import APPLIER_GROUP, INBOX_GROUP, CellKeys
from eventsched.model.limits import MAX_EVENT_BYTES
from eventsched.ops.verify import verify_cell
from eventsched.projections.stats import AT_APPEND, StatsBuilder
from eventsched.store.append import decide_at_append, submit
from eventsched.store.client import RedisClient
from eventsched.store.streams import last_id, text, xreadgroup_raw
from tests.conftest import new_namespace, remove_namespace
from tests.harness import Cell, beat, error, finalize, node, ok, session

pytestmark = pytest.mark.anyio


async def trusted(cell: Cell, *events: Event) -> list[str]:
    return [await submit(cell.client, cell.keys, None, event) for event in events]


async def applied(cell: Cell) -> str | None:
    return (await cell.hash(cell.keys.meta)).get("applied")


async def worked(cell: Cell) -> None:
    """A node and a session in the cell at the server's time (a finalize's is too),
    applied by a worker, which keeps the dispatch role's lease as a running one does."""
    await cell.append_live(node("n1"), session("s"))
    await cell.apply()


async def test_a_finalize_is_decided_in_its_append_call(cell: Cell) -> None:
    await worked(cell)
    [entry_id] = await trusted(cell, finalize("s", 0))
    # Decided before any worker looked: the job in the node's inbox, the marker at the
    # finalize, the log's group moved past it so the worker never applies it again.
    assert [job["job"] for job in await cell.inbox("n1")] == ["s:0"]
    assert [(d["job"], d["at"]) for d in await cell.decisions("d")] == [("s:0", entry_id)]
    assert await applied(cell) == entry_id
    group = (await cell.client.xinfo_groups(cell.keys.log))[0]
    assert text(group["last-delivered-id"]) == entry_id and group["lag"] == 0
    await cell.apply()  # folds the decision into the session's group state, no more
    assert len(await cell.decisions()) == 1 and await applied(cell) == entry_id


async def test_with_no_worker_holding_the_role_it_only_appends(cell: Cell) -> None:
    ids = await trusted(cell, node("n1"), session("s"), finalize("s", 0))
    assert await cell.client.xlen(cell.keys.log) == 3
    assert await applied(cell) is None and await cell.decisions() == []
    await cell.apply()
    assert [d["at"] for d in await cell.decisions("d")] == [ids[2]]
    # Once the holder's lease is gone (it stopped), appends wait for the next one again.
    await cell.client.delete(cell.keys.lease("dispatch"))
    [later] = await trusted(cell, finalize("s", 1))
    assert await applied(cell) == ids[2]
    await cell.apply()
    assert await applied(cell) == later


async def test_behind_a_backlog_it_waits_its_turn(cell: Cell) -> None:
    await worked(cell)
    [backlog] = await cell.append_live(beat("n1", cpu=99))  # overloaded: out of its pools
    [entry_id] = await trusted(cell, finalize("s", 0))
    assert await applied(cell) != entry_id and await cell.decisions() == []
    await cell.apply()
    # Applied after the beat, as the log orders them: no node could take the job now.
    assert [d["k"] for d in await cell.decisions()] == ["w"]
    assert await applied(cell) == entry_id and entry_id > backlog


async def test_decided_at_append_is_what_the_worker_decides(cell: Cell) -> None:
    await worked(cell)
    await trusted(cell, node("n2"), session("t", "en", "de"), beat("n1"))
    for index in range(4):
        await trusted(cell, finalize("s", index), finalize("t", index))
    for job_id, node_id in sorted((await cell.dispatched_to()).items())[:3]:
        await trusted(cell, ok(job_id, 1, node_id))
    await cell.apply()  # the groups projection: the outputs are compared too
    assert len(await cell.decisions("o")) == 3
    report = await verify_cell(cell.client, cell.keys)
    assert report.ok, report.problems


async def test_what_the_worker_would_refuse_is_dead_lettered_at_append(cell: Cell) -> None:
    await worked(cell)
    huge = finalize("s", 0).model_copy(update={"audio_ref": "a" * MAX_EVENT_BYTES})
    [too_large, unknown] = await trusted(cell, huge, finalize("nobody", 0))
    dead = await cell.dlq()
    assert [d["log_id"] for d in dead] == [too_large, unknown]
    assert dead[0]["reason"].startswith("entry_too_large")
    assert dead[1]["reason"] == "unknown_session"
    assert await applied(cell) == unknown


async def test_an_entry_the_script_fails_on_is_left_to_the_worker(cell: Cell) -> None:
    await worked(cell)
    # A node record no event could write: picking it raises inside the script.
    await cell.client.hset(cell.keys.node("n1"), "hb", "not a number")
    before = await applied(cell)
    [entry_id] = await trusted(cell, finalize("s", 0))
    assert await applied(cell) == before and await cell.dlq() == []
    await cell.apply()  # the worker meets it in the log and dead-letters it
    assert [d["log_id"] for d in await cell.dlq()] == [entry_id]
    assert await applied(cell) == entry_id


async def test_a_result_acknowledges_its_job_in_the_same_call(cell: Cell) -> None:
    await worked(cell)
    await trusted(cell, finalize("s", 0))
    inbox = cell.keys.inbox("n1")
    [(_, [(job_entry, _)])] = await xreadgroup_raw(
        cell.client, INBOX_GROUP, "n1", {inbox: ">"}, 1, None
    )
    assert (await cell.client.xpending(inbox, INBOX_GROUP))["pending"] == 1
    await decide_at_append(cell.client, cell.keys, ok("s:0", 1, "n1"), ("n1", text(job_entry)))
    assert (await cell.client.xpending(inbox, INBOX_GROUP))["pending"] == 0
    assert [d["job"] for d in await cell.decisions("o")] == ["s:0"]
    assert (await cell.client.xpending(cell.keys.log, APPLIER_GROUP))["pending"] == 0


async def test_decided_finalizes_count_in_the_dispatch_histogram_once(cell: Cell) -> None:
    await worked(cell)
    await trusted(cell, finalize("s", 0), finalize("s", 1))
    assert await cell.client.hget(cell.keys.stats, AT_APPEND) == b"2"
    builder = StatsBuilder()
    snapshot = await builder.publish(cell.client, cell.keys, 0)
    assert snapshot["dispatch_histogram"][0] == 2 and snapshot["dispatch_p99_ms"] == 1
    assert (await builder.publish(cell.client, cell.keys, 0))["dispatch_histogram"][0] == 0


async def test_an_outcome_reaches_its_session_in_the_result_s_call(cell: Cell) -> None:
    await worked(cell)
    await trusted(cell, finalize("s", 0), finalize("s", 1))
    await trusted(cell, ok("s:1", 1, "n1"))
    assert await cell.outputs("s") == []  # held: utterance 0 is still running
    await trusted(cell, ok("s:0", 1, "n1"))
    # Both out, in utterance order, folded in the second result's own call: the group
    # state's marker and consumer group are at the newest decision, so the worker's
    # groups role finds nothing left to fold.
    assert [(o["idx"], o["st"]) for o in await cell.outputs("s")] == [("0", "ok"), ("1", "ok")]
    newest = await last_id(cell.client, cell.keys.decisions)
    assert (await cell.hash(cell.keys.meta))["groups_applied"] == newest
    groups = await cell.client.xinfo_groups(cell.keys.decisions)
    assert text(groups[0]["last-delivered-id"]) == newest and groups[0]["lag"] == 0


async def test_while_the_group_state_lags_decisions_wait_for_the_worker(cell: Cell) -> None:
    await worked(cell)
    await cell.client.delete(cell.keys.lease("groups"))  # its holder stopped
    await trusted(cell, finalize("s", 0), ok("s:0", 1, "n1"))
    assert [d["k"] for d in await cell.decisions()] == ["d", "r", "o"]
    assert await cell.outputs("s") == []  # decided, not folded
    # Lagging, the group state is not caught up even once a holder is back: the worker
    # folds what waits, and from then on appends fold their own decisions again.
    await cell.client.set(cell.keys.lease("groups"), "test-worker")
    await trusted(cell, finalize("s", 1))
    assert await cell.outputs("s") == []
    await cell.apply()
    assert [o["idx"] for o in await cell.outputs("s")] == ["0"]
    await trusted(cell, ok("s:1", 1, "n1"))
    assert [o["idx"] for o in await cell.outputs("s")] == ["0", "1"]


async def test_each_cell_decides_by_its_own_settings_call_after_call(client: RedisClient) -> None:
    """apply.lua keeps the settings it read from one call to the next: never another
    cell's, never from before a change."""
    namespace = new_namespace()
    queued, rejecting = (Cell(client, CellKeys(name, namespace)) for name in ("c0", "c1"))
    try:
        for cell in (queued, rejecting):
            await cell.append_live(node("n1", max_concurrency=1), session("a"), session("b"))
            await cell.apply()
        await trusted(rejecting, SettingsChanged(settings={"queue_wait_ms": 0}))
        for cell in (queued, rejecting, queued, rejecting):  # one slot each: a takes it
            await trusted(cell, finalize("a" if await cell.decisions("d") == [] else "b", 0))
        assert [d["k"] for d in await queued.decisions()] == ["d", "w"]
        assert [d["k"] for d in await rejecting.decisions()] == ["d", "x"]
        # Changed back: the next finalize of that cell waits as the other's did.
        await trusted(rejecting, SettingsChanged(settings={"queue_wait_ms": 5000}))
        await trusted(rejecting, finalize("b", 1))
        assert (await rejecting.decisions())[-1]["k"] == "w"
    finally:
        await remove_namespace(client, namespace)


_STEP = st.one_of(
    st.tuples(st.just("finalize"), st.integers(0, 2)),  # which session
    st.tuples(st.just("answer"), st.integers(0, 30), st.booleans()),  # which job, ok
    st.tuples(st.just("beat"), st.integers(0, 1)),  # which node
    st.tuples(st.just("worker")),  # a worker applies what waits, and holds the roles
    st.tuples(st.just("stop")),  # it goes: appends wait in the log
    st.tuples(st.just("backlog")),  # a plain append: what follows waits behind it
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(steps=st.lists(_STEP, min_size=1, max_size=20))
async def test_any_interleaving_leaves_what_the_worker_alone_would(
    cell: Cell, steps: list[tuple[Any, ...]]
) -> None:
    """Trusted appends decided at append or not, by whichever way each found the cell,
    amid worker runs, stops and backlogs: verify refolds the whole log through the
    worker's path alone and finds the same state (one cell for every example)."""
    if not await cell.client.exists(cell.keys.node("n0")):
        await cell.append_live(node("n0", max_concurrency=2), node("n1", max_concurrency=1))
        await cell.append_live(*(session(f"s{i}") for i in range(3)))
        await cell.apply()
    indexes: dict[int, int] = vars(cell).setdefault("next_index", {})
    for step in steps:
        match step:
            case ("finalize", which):
                index = indexes.get(which, 0)
                indexes[which] = index + 1
                await trusted(cell, finalize(f"s{which}", index))
            case ("answer", which, succeeded):
                running = sorted((await cell.dispatched_to()).items())
                if running:
                    job_id, node_id = running[which % len(running)]
                    attempt = int((await cell.hash(cell.keys.job(job_id))).get("att", 1))
                    answer = ok if succeeded else error
                    await trusted(cell, answer(job_id, attempt, node_id))
            case ("beat", which):
                await trusted(cell, beat(f"n{which}"))
            case ("worker",):
                await cell.apply()
            case ("stop",):
                await cell.stop()
            case ("backlog",):
                await cell.append_live(beat("n0"))
    await cell.apply()
    report = await verify_cell(cell.client, cell.keys)
    assert report.ok, report.problems
