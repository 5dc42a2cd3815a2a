"""The trust boundary's door on both stores: what confined principals send to their
ingress streams reaches the log stamped with where it came from, with IDs the server
gave, once; what a principal may not send is dead-lettered with no effect. (Redis ACLs,
which keep principals out of every other key, are tested in test_acl on a private
server: fakeredis has none.)"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from eventsched.dispatch import ingress as ingress_module
from eventsched.dispatch.applier import Applier, Taken
from eventsched.dispatch.ingress import PER_STREAM, Ingress
from eventsched.dispatch.worker import Worker
from eventsched.model.entries import fields_args
from eventsched.model.events import (
    ENTRY_FIELD,
    Event,
    NodeDeregistered,
    NodeDraining,
    encode_event,
)
from eventsched.model.limits import DLQ_COPY_BYTES, MAX_EVENT_BYTES
from eventsched.ops.verify import verify_cell
from eventsched.store.append import submit
from eventsched.store.client import is_cluster
from eventsched.store.streams import parse_id, text, xrange_raw
from tests.harness import Cell, beat, error, finalize, node, ok, session, wait_for

pytestmark = pytest.mark.anyio


async def send(cell: Cell, source: str, *events: Event) -> list[str]:
    """Send as the principal ``source`` would, registered as ``eventsched acl`` does."""
    await cell.client.zadd(cell.keys.principals, {source: 0})
    return [await submit(cell.client, cell.keys, source, event) for event in events]


async def bell_heard(cell: Cell) -> bool:
    """Whether a subscription to the cell's bell is in place (on a cluster, on the node
    serving the bell's slot, where the worker's subscription went)."""
    client: Any = cell.client
    if is_cluster(cell.client):
        reply = await client.pubsub_numsub(
            cell.keys.bell, target_nodes=client.get_node_from_key(cell.keys.bell)
        )
    else:
        reply = await client.pubsub_numsub(cell.keys.bell)
    counts = reply.values() if isinstance(reply, dict) else [reply]
    return any(count for per_node in counts for _, count in per_node)


async def log_entries(cell: Cell) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(text(i), f) for i, f in await xrange_raw(cell.client, cell.keys.log)]


async def test_admitted_entries_are_stamped_applied_once_and_leave_the_ingress(
    cell: Cell,
) -> None:
    await send(cell, "node:n1", node("n1"))
    await cell.apply()  # entries of two streams in one millisecond come in either order
    await send(cell, "gateway:g1", session("g1.s"), finalize("g1.s", 0))
    await cell.apply()
    entries = await log_entries(cell)
    assert [f[b"by"] for _, f in entries] == [b"node:n1", b"gateway:g1", b"gateway:g1"]
    assert [d["node"] for d in await cell.decisions("d")] == ["n1"]
    # Applied in the admitting call: the marker is at the last entry, and the log's group
    # was moved past them, so they are not read (nor applied) a second time.
    assert (await cell.hash(cell.keys.meta))["applied"] == entries[-1][0]
    groups = await cell.client.xinfo_groups(cell.keys.log)
    assert text(groups[0]["last-delivered-id"]) == entries[-1][0] and groups[0]["lag"] == 0
    assert await cell.client.xlen(cell.keys.ingress("gateway:g1")) == 0
    assert await cell.apply() == 0
    assert len(await cell.decisions("d")) == 1


async def test_a_principal_speaks_for_itself_only(cell: Cell) -> None:
    await send(cell, "node:n1", node("n1"))
    await send(cell, "gateway:g1", session("g1.s"))
    await cell.apply()
    before = await cell.hash(cell.keys.node("n1"))
    # A forged heartbeat at 100 % CPU and a forged deregistration, from another node;
    # a node opening a session; a gateway finalizing another gateway's session.
    await send(cell, "node:n2", beat("n1", cpu=100))
    await send(cell, "node:n2", node("n1").model_copy(update={"max_concurrency": 64}))
    await send(cell, "node:n2", NodeDraining(node_id="n1"), NodeDeregistered(node_id="n1"))
    await send(cell, "gateway:g2", finalize("g1.s", 0), session("g1.t"))
    await send(cell, "node:n1", session("g1.u"))
    await cell.apply()
    reasons = sorted(d["reason"] for d in await cell.dlq())
    assert reasons == sorted(
        [
            "identity_mismatch: node:n2 sent node_heartbeat for node n1",
            "identity_mismatch: node:n2 sent node_registered for node n1",
            "identity_mismatch: node:n2 sent node_draining for node n1",
            "identity_mismatch: node:n2 sent node_deregistered for node n1",
            "not_owner: session g1.s is not gateway g2's",
            "not_owner: session g1.t is not gateway g2's",
            "identity_mismatch: node:n1 sent session_opened",
        ]
    )
    after = await cell.hash(cell.keys.node("n1"))
    assert {k: after[k] for k in ("cpu", "mc", "st")} == {k: before[k] for k in ("cpu", "mc", "st")}
    assert await cell.decisions() == []  # nothing was decided on any of them
    assert not await cell.client.exists(cell.keys.session("g1.t"))


async def test_a_result_for_another_nodes_job_is_dead_lettered(cell: Cell) -> None:
    await send(cell, "node:n1", node("n1"))
    await send(cell, "node:n2", node("n2", langs=("fr",)))
    await cell.apply()
    await send(cell, "gateway:g1", session("g1.s"), finalize("g1.s", 0))
    await cell.apply()
    assert await cell.dispatched_to() == {"g1.s:0": "n1"}
    await send(cell, "node:n2", ok("g1.s:0", 1, "n2"))  # n2 speaking for itself, not its job
    await send(cell, "node:n2", ok("g1.s:0", 1, "n1"))  # n2 speaking for n1
    await send(cell, "node:n2", error("g1.s:0", 1, "n1"))  # MODEL_NOT_AVAILABLE, for n1
    await cell.apply()
    assert [d["reason"].split(":")[0] for d in await cell.dlq()] == [
        "not_owner",
        "identity_mismatch",
        "identity_mismatch",
    ]  # one stream: in the order sent
    assert not [
        k for k, v in (await cell.hash(cell.keys.node("n1"))).items() if k.startswith("na:")
    ]
    assert await cell.decisions("o") == []
    await send(cell, "node:n1", ok("g1.s:0", 1, "n1"))
    await cell.apply()
    assert len(await cell.decisions("o")) == 1


async def test_ids_a_client_chose_never_reach_the_log(cell: Cell) -> None:
    """A day ahead froze the cell's event time; the maximum ID exhausted the log."""
    await send(cell, "node:n1", node("n1"))
    await cell.apply()
    ingress = cell.keys.ingress("node:n1")
    day_ahead = parse_id(text(await cell.client.xadd(ingress, {"x": "1"})))[0] + 86_400_000
    for entry_id in (f"{day_ahead}-0", "18446744073709551615-18446744073709551615"):
        await cell.client.xadd(ingress, {ENTRY_FIELD: encode_event(beat("n1"))}, id=entry_id)
    await cell.apply()
    *_, (first, _), (second, _) = await log_entries(cell)
    ingress_times = [parse_id(first)[0], parse_id(second)[0]]
    assert all(ms < day_ahead - 86_000_000 for ms in ingress_times)
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "up"
    await send(cell, "gateway:g1", session("g1.s"))  # the log still takes entries
    await cell.apply()
    assert await cell.client.exists(cell.keys.session("g1.s"))


async def test_an_entry_breaking_the_bounds_is_refused_with_a_bounded_copy(cell: Cell) -> None:
    ingress = cell.keys.ingress("node:n1")
    await cell.client.zadd(cell.keys.principals, {"node:n1": 0})
    await cell.client.xadd(ingress, {ENTRY_FIELD: "x" * (MAX_EVENT_BYTES + 1)})
    await cell.client.xadd(ingress, {ENTRY_FIELD: encode_event(beat("n1")), "by": "worker"})
    await cell.apply()
    (_, huge), (_, forged) = await log_entries(cell)
    assert sum(len(k) + len(v) for k, v in huge.items()) < 2 * DLQ_COPY_BYTES
    assert huge[b"by"] == forged[b"by"] == b"node:n1"  # the stamp is the worker's
    reasons = [d["reason"] for d in await cell.dlq()]
    assert reasons[0].startswith("entry_too_large") and reasons[1].startswith("malformed_entry")
    assert (await cell.dlq())[0]["cut"] == f"1 fields, {MAX_EVENT_BYTES + 2} bytes"
    # the log says the same thing again when it is read rather than admitted
    assert fields_args(huge)[1][0] == reasons[0]


async def test_ingress_behind_a_log_backlog_waits_its_turn(cell: Cell) -> None:
    await cell.append_live(node("n1"), session("s"))  # a trusted producer, not yet applied
    await send(cell, "gateway:g1", session("g1.s"))
    worker = Worker(cell.client, [cell.keys], name="w")
    await worker.roles[0].lease.keep()
    await worker.roles[0].take_over()
    assert await worker._admit(worker.roles[0]) == 1  # appended to the log, not applied
    assert (await cell.hash(cell.keys.meta)).get("applied") is None
    await worker.drain()
    entries = await log_entries(cell)
    assert (await cell.hash(cell.keys.meta))["applied"] == entries[-1][0]
    assert await cell.client.exists(cell.keys.session("g1.s"), cell.keys.session("s")) == 2


async def test_an_entry_is_admitted_once_even_when_sent_twice(cell: Cell) -> None:
    await send(cell, "node:n1", node("n1"))
    ingress = Ingress(cell.client, cell.keys)
    taken = await ingress.take()
    worker = Worker(cell.client, [cell.keys], name="w")
    await worker.roles[0].lease.keep()
    applier = worker.roles[0].projection
    assert isinstance(applier, Applier)
    for _ in range(2):
        await applier.admit(taken, 96)
    assert len(await log_entries(cell)) == 1


async def test_a_flooding_principal_holds_the_others_back_one_read_at_most(cell: Cell) -> None:
    await cell.client.zadd(cell.keys.principals, {"node:flood": 0, "node:n1": 0})
    flood = [encode_event(beat("flood"))] * (PER_STREAM * 20)
    async with cell.client.pipeline(transaction=False) as pipe:
        for raw in flood:
            pipe.xadd(cell.keys.ingress("node:flood"), {ENTRY_FIELD: raw})
        await pipe.execute()
    await submit(cell.client, cell.keys, "node:n1", node("n1"))
    taken = await Ingress(cell.client, cell.keys).take()
    assert [source for source, _, _ in taken].count("node:flood") == PER_STREAM
    assert "node:n1" in [source for source, _, _ in taken]


async def test_a_running_worker_wakes_on_the_bell_and_verify_passes(cell: Cell) -> None:
    worker = Worker(cell.client, [cell.keys], name="w", tick_ms=50)
    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run, stop)

        async def taken() -> bool:
            return worker.roles[0].taken

        await wait_for(taken)
        await wait_for(lambda: bell_heard(cell))  # a bell rung before it is in place is lost
        # Not registered: no sweep finds these, only their bells.
        await submit(cell.client, cell.keys, "node:n1", node("n1"))
        await submit(cell.client, cell.keys, "gateway:g1", session("g1.s"))
        await submit(cell.client, cell.keys, "gateway:g1", finalize("g1.s", 0))

        async def dispatched() -> bool:
            return bool(await cell.decisions("d"))

        await wait_for(dispatched)
        stop.set()
    report = await verify_cell(cell.client, cell.keys)
    assert report.ok, report.problems


async def test_a_hot_stream_is_read_by_the_blocking_read_from_where_it_was_left(
    cell: Cell,
) -> None:
    ingress = Ingress(cell.client, cell.keys)
    first = await send(cell, "gateway:g1", session("g1.s"))
    assert [text(i) for _, i, _ in await ingress.take()] == first
    # Still in the stream (not admitted): the blocking read starts after what was read.
    second = await submit(cell.client, cell.keys, "gateway:g1", finalize("g1.s", 0))
    assert [text(i) for _, i, _ in await ingress.take_hot(block_ms=None)] == [second]
    ingress.ring("gateway:g1")  # held by the blocking read: no second read of it
    assert ingress.pending == 0
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            later: list[Taken] = []

            async def read() -> None:
                later.extend(await ingress.take_hot(block_ms=5000))

            group.start_soon(read)
            # Before or after the read blocks, the same: it reads from an ID, not from "$".
            third = await submit(cell.client, cell.keys, "gateway:g1", finalize("g1.s", 1))
    assert [text(i) for _, i, _ in later] == [third]


async def test_a_stream_leaving_the_blocking_read_is_read_again_from_its_start(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingress_module, "HOT_STREAMS", 1)
    ingress = Ingress(cell.client, cell.keys)
    first = await send(cell, "gateway:g1", session("g1.s"))
    await ingress.take()  # (not admitted: still in the stream)
    assert await ingress.take_hot(block_ms=None) == []  # g1 held from here
    later = await submit(cell.client, cell.keys, "gateway:g1", finalize("g1.s", 0))
    ingress.ring("gateway:g1")  # ignored: held
    await send(cell, "gateway:g2", session("g2.s"))
    ingress.ring("gateway:g2")
    assert [source for source, _, _ in await ingress.take()] == ["gateway:g2"]  # g1 out
    assert [text(i) for _, i, _ in await ingress.take()] == [*first, later]
