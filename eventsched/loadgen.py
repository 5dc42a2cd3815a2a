"""A load generator: simulated GPU nodes and speaking sessions against one cell.

It only appends events and reads streams, exactly as real nodes and gateways would;
an applier (``eventsched worker``, or the demo's in-process one) must run beside it.
Nodes have mixed language sets and capacities, take jobs from their inboxes, answer
after a random service time, and a share of them answer MODEL_NOT_AVAILABLE. Sessions
open, finalize their utterances at a speaking pace, and close once every utterance has
ended. A share of the nodes dies silently mid-run (no beats, jobs in hand dropped) and
comes back later, registering again as a restarted node would. Every Redis call rides
out a restart or a lost connection. The report is then read back from the streams
(``metrics.measure``).
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from .events import (
    Event,
    JobResult,
    NodeDeregistered,
    NodeHeartbeat,
    NodeRegistered,
    Services,
    SessionClosed,
    SessionOpened,
    StageTimings,
    UtteranceFinalized,
)
from .keys import CellKeys
from .log import append_many
from .metrics import RunReport, measure
from .retry import patiently
from .store import RedisClient
from .streams import text, xread_raw

__all__ = ["LoadSpec", "Progress", "run_load"]

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


async def _count_delivered(client: RedisClient, keys: CellKeys, plan: _Plan) -> int:
    async with client.pipeline(transaction=False) as pipe:
        for session in plan.sessions:
            pipe.xlen(keys.output(session.session_id))
        lengths = await pipe.execute()
    return sum(int(n) for n in lengths)


async def run_load(
    client: RedisClient,
    keys: CellKeys,
    spec: LoadSpec,
    on_progress: Progress | None = None,
) -> RunReport:
    await client.ping()  # unreachable at the start: fail now, not after the outage window
    rng = random.Random(spec.seed)
    plan = _plan(spec, rng)
    target = spec.sessions * spec.utterances
    down_until: dict[str, float] = {}  # node -> monotonic time it comes back

    async def emit(*events: Event) -> None:
        await patiently(lambda: append_many(client, keys, events))

    def is_down(node_id: str) -> bool:
        return time.monotonic() < down_until.get(node_id, 0.0)

    await emit(*plan.nodes)

    async def heartbeats() -> None:
        while True:
            await anyio.sleep(spec.heartbeat_ms / 1000)
            await emit(
                *(
                    NodeHeartbeat(
                        node_id=node.node_id,
                        cpu_pct=rng.randint(5, 70),
                        gpu_pct=rng.randint(5, 80),
                        mem_pct=rng.randint(20, 70),
                    )
                    for node in plan.nodes
                    if not is_down(node.node_id)
                )
            )

    async def die_and_return(node: NodeRegistered) -> None:
        """Go silent mid-run (no beats, jobs dropped), then restart and register again."""
        await anyio.sleep(rng.uniform(0.2, 0.6) * spec.utterances * sum(spec.gap_ms) / 2000)
        down_s = rng.randint(*spec.down_ms) / 1000
        down_until[node.node_id] = time.monotonic() + down_s
        await anyio.sleep(down_s)
        await emit(node)

    async def serve_job(node_id: str, fields: dict[bytes, bytes]) -> None:
        service_ms = rng.randint(*spec.service_ms)
        await anyio.sleep(service_ms / 1000)
        if is_down(node_id):
            return  # died with the job in hand: nothing comes back
        job_id, attempt = fields[b"job"].decode(), int(fields[b"att"])
        if node_id in plan.flaky and rng.random() < 0.5:
            result = JobResult(
                job_id=job_id,
                attempt=attempt,
                node_id=node_id,
                ok=False,
                error_code="MODEL_NOT_AVAILABLE",
            )
        else:
            result = JobResult(
                job_id=job_id,
                attempt=attempt,
                node_id=node_id,
                ok=True,
                asr_text=f"utterance {job_id}",
                nmt_text=f"translation {job_id}",
                tts_audio_ref=f"tts/{job_id}/{attempt}.opus",
                tts_duration_ms=rng.randint(300, 2000),
                timings=StageTimings(
                    asr_ms=service_ms // 3, nmt_ms=service_ms // 3, tts_ms=service_ms // 3
                ),
            )
        await emit(result)

    async def nodes(task_group: anyio.abc.TaskGroup) -> None:
        cursors: dict[str, str] = {keys.inbox(n.node_id): "0-0" for n in plan.nodes}
        owner = {keys.inbox(n.node_id): n.node_id for n in plan.nodes}
        while True:
            for stream_name, entries in await patiently(
                lambda: xread_raw(client, cursors, block_ms=200)
            ):
                stream = text(stream_name)
                for entry_id, fields in entries:
                    cursors[stream] = text(entry_id)
                    if not is_down(owner[stream]):
                        task_group.start_soon(serve_job, owner[stream], fields)

    async def speak(session: SessionOpened) -> None:
        await emit(session)
        for index in range(spec.utterances):
            await anyio.sleep(rng.randint(*spec.gap_ms) / 1000)
            await emit(
                UtteranceFinalized(
                    session_id=session.session_id,
                    utterance_index=index,
                    reason=rng.choice(("pause", "pause", "max_length", "client")),
                    audio_ref=f"audio/{session.session_id}/{index}.opus",
                    duration_ms=rng.randint(500, 6000),
                )
            )

    async def wait_outcomes() -> None:
        with anyio.move_on_after(spec.timeout_s):
            while True:
                delivered = await patiently(lambda: _count_delivered(client, keys, plan))
                if on_progress is not None:
                    on_progress(delivered, target)
                if delivered >= target:
                    break
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as fleet:
        fleet.start_soon(heartbeats)
        fleet.start_soon(nodes, fleet)
        # The run ends when every finalize has ended and every dead node is back.
        async with anyio.create_task_group() as story:
            for node in plan.nodes:
                if node.node_id in plan.mortal:
                    story.start_soon(die_and_return, node)
            for session in plan.sessions:
                story.start_soon(speak, session)
        await wait_outcomes()
        fleet.cancel_scope.cancel()

    await emit(*(SessionClosed(session_id=s.session_id) for s in plan.sessions))
    await emit(*(NodeDeregistered(node_id=n.node_id) for n in plan.nodes))
    return await patiently(
        lambda: measure(
            client,
            keys,
            [s.session_id for s in plan.sessions],
            [n.node_id for n in plan.nodes],
        )
    )
