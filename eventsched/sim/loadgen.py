"""A load generator: simulated GPU nodes and speaking sessions against one cell, or
spread over many (a Redis Cluster's cells).

It only appends events and reads streams, exactly as real nodes and gateways would;
an applier (``eventsched worker``, or the demo's in-process one) must run beside it.
Nodes have mixed language sets and capacities, take jobs from their inboxes, answer
after a random service time, and a share of them answer MODEL_NOT_AVAILABLE. Sessions
open, finalize their utterances at a speaking pace, and close once every utterance has
ended. A share of the nodes dies silently mid-run (no beats, jobs in hand dropped) and
comes back later, registering again as a restarted node would. Every Redis call rides
out a restart or a lost connection.

Over several cells, the nodes of each language set share cells of their own
(``_fleet_plan``), and the sessions open through a ``Gateway``, which picks each one's
cell from the directory by its language pair and load; they start once the cells'
offers show the nodes.

The report is read back from the streams (``ops.audit.measure``), except what only the
gateway side can know, because Redis may have lost it: ``finalized`` is the finalizes
whose append Redis acknowledged, counted here as they were acknowledged, ``delivered``
the outcomes the sessions received (an utterance the session client gave up on is not
one), ``lost`` the difference, and ``out_of_order`` adds any outcome a session received
before an earlier one.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import anyio
from redis.exceptions import RedisError

from eventsched.clients.cells import Gateway
from eventsched.clients.node import Job, JobFailed, JobOutput, Node
from eventsched.clients.retry import patiently
from eventsched.clients.session import Session, SessionClient
from eventsched.model.events import NodeRegistered, Services, SessionOpened, StageTimings
from eventsched.model.keys import CellKeys
from eventsched.ops.audit import RunReport, combine, measure
from eventsched.projections.directory import list_in_directory, read_directory
from eventsched.store.client import RedisClient
from eventsched.store.streams import last_id, text

__all__ = ["NOTHING_APPLIED_S", "LoadSpec", "Progress", "run_load"]

log = logging.getLogger("eventsched.loadgen")

NOTHING_APPLIED_S = 3.0  # a log growing unapplied this long: no worker, most likely
OFFERS_WAIT_S = 20.0  # several cells: how long sessions wait for offers showing the nodes

# Language sets of the simulated fleet; a node serves every pair within its set.
PROFILES = (("en", "zh"), ("en", "ja"), ("en", "es"), ("en", "ja", "zh"), ("de", "en"))

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LoadSpec:
    nodes: int = 20
    sessions: int = 40
    utterances: int = 10
    seed: int = 7
    flaky_share: float = 0.15  # nodes that answer MODEL_NOT_AVAILABLE half the time
    mortal_share: float = 0.1  # nodes that die silently mid-run, then come back
    down_ms: tuple[int, int] = (6000, 8000)  # how long a dead node stays silent
    gap_ms: tuple[int, int] = (120, 300)  # between two finalizes of one session
    service_ms: tuple[int, int] = (20, 120)  # how long a node works on a job
    heartbeat_ms: int = 1000
    timeout_s: float = 120.0  # give up waiting for outcomes after this
    resend_s: float = 10.0  # a finalize with no outcome this long is sent again
    max_sends: int = 4  # then the session client gives it up as lost


@dataclass
class _Plan:
    run_id: str
    nodes: list[NodeRegistered] = field(default_factory=list)
    flaky: set[str] = field(default_factory=set)
    mortal: set[str] = field(default_factory=set)
    sessions: list[SessionOpened] = field(default_factory=list)


def _plan(spec: LoadSpec, rng: random.Random) -> _Plan:
    plan = _Plan(run_id=f"{spec.seed}-{secrets.token_hex(3)}")
    for i in range(spec.nodes):
        langs = list(PROFILES[i % len(PROFILES)])
        node_id = f"n-{plan.run_id}-{i}"
        plan.nodes.append(
            NodeRegistered(
                node_id=node_id,
                services=Services(asr=langs, nmt=langs, tts=langs),
                semantic_languages=langs,
                max_concurrency=rng.randint(1, 4),
                gpu="sim-gpu-24g",
            )
        )
        if rng.random() < spec.flaky_share:
            plan.flaky.add(node_id)
    if spec.mortal_share > 0:
        count = max(1, round(spec.nodes * spec.mortal_share))
        plan.mortal = {n.node_id for n in rng.sample(plan.nodes, min(count, spec.nodes))}
    served = sorted({tuple(n.semantic_languages) for n in plan.nodes})
    for i in range(spec.sessions):
        src, tgt = rng.sample(list(rng.choice(served)), 2)
        plan.sessions.append(
            SessionOpened(session_id=f"s-{plan.run_id}-{i}", src_lang=src, tgt_lang=tgt)
        )
    return plan


async def _watch_applying(client: RedisClient, keys: CellKeys) -> None:
    """Say so, once, when the log grows and nothing applies it for NOTHING_APPLIED_S: a
    load with no worker beside it would otherwise wait out its timeout in silence."""
    since: float | None = None
    while True:
        await anyio.sleep(0.5)
        try:
            applied = await client.hget(keys.meta, "applied")
            newest = await last_id(client, keys.log)
        except (RedisError, OSError):
            continue  # an outage: the clients ride it out, and this waits with them
        if newest is None or (applied is not None and text(applied) == newest):
            since = None
        elif since is None:
            since = anyio.current_time()
        elif anyio.current_time() - since >= NOTHING_APPLIED_S:
            log.warning(
                "nothing is applying the log of %s (is a worker running on this Redis?)",
                keys.log,
            )
            return


def _fleet_plan(plan: _Plan, cells: Sequence[CellKeys]) -> dict[str, CellKeys]:
    """Each node's cell. Over several cells, cell i serves language set i (mod the sets)
    and each set's nodes take its cells in turn: the nodes of a cell back each other
    up, where spreading every set thinly would leave one node of a pair per cell."""
    if len(cells) == 1:
        return {registration.node_id: cells[0] for registration in plan.nodes}
    sets = len(PROFILES)  # node i has language set i % sets (_plan)
    chosen: dict[str, CellKeys] = {}
    for index, registration in enumerate(plan.nodes):
        own = cells[index % sets :: sets] or [cells[index % sets % len(cells)]]
        chosen[registration.node_id] = own[(index // sets) % len(own)]
    return chosen


async def _offers_show(client: RedisClient, cells: Sequence[CellKeys], nodes: int) -> None:
    """Wait (OFFERS_WAIT_S at most) until the cells' offers in the directory count
    ``nodes`` nodes: a gateway chooses by them, and would otherwise see no cell serving
    any pair."""
    names = {keys.cell for keys in cells}
    with anyio.move_on_after(OFFERS_WAIT_S):
        while True:
            try:
                offers = await read_directory(client, cells[0].namespace)
                if sum(offer.nodes for cell, offer in offers.items() if cell in names) >= nodes:
                    return
            except (RedisError, OSError):
                pass  # an outage: wait it out with the clients
            await anyio.sleep(0.25)
    log.warning("the directory's offers do not show the nodes yet; sessions start anyway")


async def run_load(
    client: RedisClient,
    cells: Sequence[CellKeys],
    spec: LoadSpec,
    on_progress: Progress | None = None,
) -> RunReport:
    """Run the load over ``cells`` (one, or several of one namespace) and report it."""
    if not cells or len({keys.namespace for keys in cells}) != 1:
        raise ValueError("a load runs over one or more cells of one namespace")
    await client.ping()  # unreachable at the start: fail now, not after the outage window
    rng = random.Random(spec.seed)
    plan = _plan(spec, rng)
    target = spec.sessions * spec.utterances
    nodes: dict[str, Node] = {}  # the running incarnation of each node
    sessions: list[Session] = []
    received = delivered = inversions = 0
    node_cells = _fleet_plan(plan, cells)

    def node_of(registration: NodeRegistered) -> Node:
        node_id = registration.node_id

        async def serve(job: Job) -> JobOutput:
            service_ms = rng.randint(*spec.service_ms)
            await anyio.sleep(service_ms / 1000)
            if node_id in plan.flaky and rng.random() < 0.5:
                raise JobFailed("MODEL_NOT_AVAILABLE")
            third = service_ms // 3
            return JobOutput(
                asr_text=f"utterance {job.job_id}",
                nmt_text=f"translation {job.job_id}",
                tts_audio_ref=f"tts/{job.job_id}/{job.attempt}.opus",
                tts_duration_ms=rng.randint(300, 2000),
                timings=StageTimings(asr_ms=third, nmt_ms=third, tts_ms=third),
            )

        def load() -> tuple[int, int, int]:
            return rng.randint(5, 70), rng.randint(5, 80), rng.randint(20, 70)

        node = Node(
            client,
            node_cells[node_id],
            node_id,
            registration.services,
            registration.max_concurrency,
            serve,
            semantic_languages=list(registration.semantic_languages),
            gpu=registration.gpu,
            heartbeat_s=spec.heartbeat_ms / 1000,
            load=load,
        )
        nodes[node_id] = node
        return node

    async def die_and_return(registration: NodeRegistered, fleet: anyio.abc.TaskGroup) -> None:
        """Run, go silent mid-run (no beats, no answers, nothing acknowledged), then
        restart under the same id, which registers again and reads its pending jobs.
        It goes holding a job when it gets one soon enough: one that dies holding
        nothing may never be missed, when the run ends before it would be lost."""
        async with anyio.create_task_group() as life:
            node = node_of(registration)
            life.start_soon(node.run)
            await anyio.sleep(rng.uniform(0.2, 0.6) * spec.utterances * sum(spec.gap_ms) / 2000)
            with anyio.move_on_after(spec.utterances * max(spec.gap_ms) / 1000):
                while not node.running:
                    await anyio.sleep(0.005)  # a local dict: nothing to wait on but time
            life.cancel_scope.cancel()
        await anyio.sleep(rng.randint(*spec.down_ms) / 1000)
        fleet.start_soon(node_of(registration).run)

    async def speak(gateway: SessionClient | Gateway, opened: SessionOpened) -> None:
        session = await gateway.open(opened.session_id, opened.src_lang, opened.tgt_lang)
        sessions.append(session)

        async def listen() -> None:
            nonlocal received, delivered, inversions
            previous = -1
            async for outcome in session.outcomes():  # until closed and all answered
                received += 1
                delivered += outcome.status != "lost"
                inversions += outcome.utterance_index <= previous
                previous = outcome.utterance_index
                if on_progress is not None:
                    on_progress(received, target)

        async with anyio.create_task_group() as both:
            both.start_soon(listen)
            for index in range(spec.utterances):
                await anyio.sleep(rng.randint(*spec.gap_ms) / 1000)
                await session.finalize(
                    index,
                    rng.choice(("pause", "pause", "max_length", "client")),
                    f"audio/{opened.session_id}/{index}.opus",
                    rng.randint(500, 6000),
                )
            await session.close()

    async with anyio.create_task_group() as fleet:
        for registration in plan.nodes:
            if registration.node_id not in plan.mortal:
                fleet.start_soon(node_of(registration).run)
        gateway: SessionClient | Gateway
        if len(cells) == 1:
            gateway = SessionClient(
                client,
                cells[0],
                block_ms=50,
                resend_after_s=spec.resend_s,
                max_sends=spec.max_sends,
            )
        else:
            await patiently(lambda: list_in_directory(client, cells))
            gateway = Gateway(
                client,
                cells[0].namespace,
                only={keys.cell for keys in cells},
                block_ms=50,
                resend_after_s=spec.resend_s,
                max_sends=spec.max_sends,
            )
            await _offers_show(client, cells, len(plan.nodes) - len(plan.mortal))
        # The run ends when every finalize has ended and every dead node is back.
        async with gateway, anyio.create_task_group() as watching:
            for keys in cells:
                watching.start_soon(_watch_applying, client, keys)
            with anyio.move_on_after(spec.timeout_s):
                async with anyio.create_task_group() as story:
                    for registration in plan.nodes:
                        if registration.node_id in plan.mortal:
                            story.start_soon(die_and_return, registration, fleet)
                    for opened in plan.sessions:
                        story.start_soon(speak, gateway, opened)
            watching.cancel_scope.cancel()
        async with anyio.create_task_group() as farewell:
            for node in list(nodes.values()):
                farewell.start_soon(node.drain)

    session_ids = [s.session_id for s in plan.sessions]
    node_ids = [n.node_id for n in plan.nodes]

    async def measured(keys: CellKeys) -> RunReport:
        return await patiently(lambda: measure(client, keys, session_ids, node_ids))

    streams = combine([await measured(keys) for keys in cells])
    finalized = sum(session.finalized for session in sessions)
    return replace(
        streams,
        finalized=finalized,
        delivered=delivered,
        lost=finalized - delivered,
        out_of_order=streams.out_of_order + inversions,
    )
