"""The node SDK and the session client against a running worker, on fakeredis and on
the real Redis; the gateway's finalize policy on explicit timestamps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from eventsched.clients.node import HANDLER_ERROR, Job, JobFailed, JobOutput, Node
from eventsched.clients.policy import FinalizePolicy
from eventsched.clients.session import SessionClient
from tests.harness import wait_for
from tests.live import EN_ZH, collect, echo, running_cell, state_is, steady


@pytest.mark.anyio
async def test_outputs_arrive_in_order_while_jobs_finish_out_of_order(store_url: str) -> None:
    async with running_cell(store_url) as cell:
        keys = cell.keys
        # Later utterances finish first: 0 takes 60 ms, 1 takes 40 ms, 2 takes 20 ms...
        handler = echo(lambda job: 60 - 20 * (job.utterance_index % 3))
        node = Node(cell.client(), keys, "n1", EN_ZH, 8, handler, heartbeat_s=0.2, load=steady)
        async with node, SessionClient(cell.client(), keys, block_ms=50) as gateway:
            await cell.registered("n1")
            session = await gateway.open("s1", "en", "zh")
            for index in range(6):
                await session.finalize(index, "pause", f"audio/{index}", 800)
            outcomes = await collect(session, 6)
            await session.close()
        assert [o.utterance_index for o in outcomes] == list(range(6))
        assert [o.status for o in outcomes] == ["ok"] * 6
        assert [o.asr_text for o in outcomes] == [f"heard {i}" for i in range(6)]
        assert node.completed == 6
        # Leaving the block drained the node: it deregistered once its jobs were done.
        reader = cell.client()
        await wait_for(lambda: state_is(reader, keys, "gone"))


@pytest.mark.anyio
async def test_a_closed_session_still_gets_the_outcomes_of_running_utterances(
    store_url: str,
) -> None:
    async with running_cell(store_url) as cell:
        keys = cell.keys
        node = Node(
            cell.client(), keys, "n1", EN_ZH, 4, echo(lambda job: 50), heartbeat_s=0.2, load=steady
        )
        async with node, SessionClient(cell.client(), keys, block_ms=50) as gateway:
            await cell.registered("n1")
            session = await gateway.open("s1", "en", "zh")
            for index in range(3):
                await session.finalize(index, "pause", f"audio/{index}", 800)
            await session.close()  # before any result is back
            with anyio.fail_after(20):
                indexes = [outcome.utterance_index async for outcome in session.outcomes()]
    assert indexes == [0, 1, 2]  # every outcome, then the iterator ends by itself


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (JobFailed("MODEL_NOT_AVAILABLE"), "MODEL_NOT_AVAILABLE"),
        (RuntimeError("bug"), HANDLER_ERROR),
    ],
)
async def test_a_handler_exception_becomes_an_error_result(
    store_url: str, raised: Exception, code: str
) -> None:
    async def failing(job: Job) -> JobOutput:
        raise raised

    async with running_cell(store_url) as cell:
        keys = cell.keys
        node = Node(cell.client(), keys, "n1", EN_ZH, 2, failing, heartbeat_s=0.2, load=steady)
        async with node, SessionClient(cell.client(), keys, block_ms=50) as gateway:
            await cell.registered("n1")
            session = await gateway.open("s1", "en", "zh")
            await session.finalize(0, "pause", "audio/0", 800)
            [outcome] = await collect(session, 1)
    assert (outcome.status, outcome.error_code) == ("failed", code), outcome.reason
    assert outcome.reason == "no_capacity"  # the only node cannot retry its own failure


@pytest.mark.anyio
async def test_drain_finishes_the_running_job_and_takes_no_new_one(store_url: str) -> None:
    release = anyio.Event()

    async def slow(job: Job) -> JobOutput:
        await release.wait()
        return JobOutput(asr_text="done")

    async with running_cell(store_url) as cell:
        keys = cell.keys
        client = cell.client()
        node = Node(client, keys, "n1", EN_ZH, 2, slow, heartbeat_s=0.2, load=steady)
        async with anyio.create_task_group() as group, SessionClient(client, keys) as gateway:
            group.start_soon(node.run)
            await cell.registered("n1")
            session = await gateway.open("s1", "en", "zh")
            await session.finalize(0, "pause", "audio/0", 800)
            await wait_for(lambda: _running(node))
            group.start_soon(node.drain)
            await wait_for(lambda: state_is(client, keys, "drain"))
            await session.finalize(1, "pause", "audio/1", 800)
            release.set()
            outcomes = await collect(session, 2)
        assert [(o.status, o.reason) for o in outcomes] == [("ok", ""), ("rejected", "no_capacity")]
        await wait_for(lambda: state_is(client, keys, "gone"))  # the worker applies it


@pytest.mark.anyio
async def test_a_restarted_node_gets_its_unacknowledged_job_again(store_url: str) -> None:
    async def stuck(job: Job) -> JobOutput:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with running_cell(store_url) as cell:
        keys = cell.keys
        client = cell.client()
        first = Node(client, keys, "n1", EN_ZH, 2, stuck, heartbeat_s=0.2, load=steady)
        async with SessionClient(client, keys) as gateway:
            async with anyio.create_task_group() as crash:
                crash.start_soon(first.run)
                await cell.registered("n1")
                session = await gateway.open("s1", "en", "zh")
                await session.finalize(0, "pause", "audio/0", 800)
                await wait_for(lambda: _running(first))
                crash.cancel_scope.cancel()  # the process dies: no result, no ack
            second = Node(
                client, keys, "n1", EN_ZH, 2, echo(lambda job: 0), heartbeat_s=0.2, load=steady
            )
            async with second:
                [outcome] = await collect(session, 1)
        assert (outcome.status, outcome.attempt, outcome.node_id) == ("ok", 1, "n1")
        assert second.completed == 1


async def _running(node: Node) -> bool:
    return bool(node.running)


def test_the_finalize_policy_ends_on_pause_length_and_client() -> None:
    policy = FinalizePolicy(pause_ms=500, hangover_ms=100, max_utterance_ms=3_000)
    assert policy.audio(0, 200, voiced=True) is None
    assert policy.audio(200, 200, voiced=False) is None  # 200 ms of silence
    assert policy.tick(799) is None  # 599 ms after the speech ended at 200
    ended = policy.tick(800)
    assert ended is not None and (ended.utterance_index, ended.reason, ended.duration_ms) == (
        0,
        "pause",
        200,
    )
    assert policy.tick(5000) is None  # nothing buffered: nothing to end
    for start in range(2000, 6000, 200):
        ended = policy.audio(start, 200, voiced=True)
        if ended is not None:
            break
    assert ended is not None and (ended.utterance_index, ended.reason) == (1, "max_length")
    assert ended.duration_ms == 3_000
    policy.audio(6000, 300, voiced=True)
    ended = policy.client_says_done()
    assert ended is not None and (ended.utterance_index, ended.reason) == (2, "client")
    assert policy.client_says_done() is None


def test_our_own_tts_playback_is_not_taken_for_the_speaker() -> None:
    policy = FinalizePolicy(pause_ms=300, hangover_ms=0)
    policy.tts_playing_until = 2_000
    assert policy.audio(1000, 500, voiced=True) is None  # echo of the playback
    assert policy.tick(1900) is None and policy.client_says_done() is None
    policy.audio(2000, 400, voiced=True)  # the speaker, after playback ended
    ended = policy.tick(2700)
    assert ended is not None and ended.duration_ms == 400
    with pytest.raises(ValueError, match="hangover"):
        FinalizePolicy(hangover_ms=250)


def _minimal_node_from_the_protocol() -> Callable[..., None]:
    """The code block at the end of docs/PROTOCOL.md, exactly as a reader copies it."""
    text = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    source = text.rsplit("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(source, "PROTOCOL.md", "exec"), namespace)
    found = namespace["minimal_node"]
    assert callable(found)
    return found


@pytest.mark.anyio
async def test_the_minimal_node_of_the_protocol_works_beside_sdk_nodes(store_url: str) -> None:
    minimal_node = _minimal_node_from_the_protocol()
    async with running_cell(store_url) as cell:
        keys = cell.keys
        sync = cell.store.sync_client(decode_responses=True)
        sdk = Node(
            cell.client(),
            keys,
            "n-sdk",
            EN_ZH,
            1,
            echo(lambda job: 30),
            heartbeat_s=0.2,
            load=steady,
        )
        try:
            gateway = SessionClient(cell.client(), keys, block_ms=50)
            async with sdk, gateway, anyio.create_task_group() as group:
                group.start_soon(
                    anyio.to_thread.run_sync, minimal_node, sync, keys.prefix, "n-min", 2
                )
                await cell.registered("n-sdk", "n-min")
                session = await gateway.open("s1", "en", "zh")
                for index in range(6):
                    await session.finalize(index, "pause", f"audio/{index}", 500)
                    await anyio.sleep(0.05)  # a speaker's pace, so both nodes get work
                outcomes = await collect(session, 6)
        finally:
            sync.close()
    assert [o.utterance_index for o in outcomes] == list(range(6))
    by_node = {o.node_id for o in outcomes if o.status == "ok"}
    assert by_node == {"n-min", "n-sdk"}
    assert [o.nmt_text for o in outcomes if o.node_id == "n-min"] == ["你好", "你好"]
