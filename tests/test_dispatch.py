"""Every dispatch step and every rejection reason, on fakeredis and on the real Redis."""

from __future__ import annotations

import pytest

from eventsched.model.events import (
    NodeDeregistered,
    NodeDraining,
    NodeHeartbeat,
    NodeUndrained,
    Pool,
    PoolsConfigured,
    Tick,
)
from eventsched.store.streams import read_stream
from tests.harness import Cell, beat, error, finalize, node, ok, session

pytestmark = pytest.mark.anyio


async def test_a_finalize_is_dispatched_to_a_node_and_handed_off(cell: Cell) -> None:
    await cell.step(node("n1"), session("s1"))
    cell.advance(40)
    await cell.step(finalize("s1", 0))

    [decision] = await cell.decisions("d")
    assert decision == {
        "k": "d",
        "job": "s1:0",
        "att": "1",
        "node": "n1",
        "pool": "auto+en+zh",
        "sid": "s1",
        "idx": "0",
        "at": f"{cell.now_ms}-0",
    }
    [handed] = await cell.inbox("n1")
    deadline = cell.now_ms + cell.settings.job_timeout_ms
    assert handed == {
        "job": "s1:0",
        "att": "1",
        "sid": "s1",
        "idx": "0",
        "src": "en",
        "tgt": "zh",
        "audio": "audio/s1/0",
        "dl": str(deadline),
    }
    job = await cell.hash(cell.keys.job("s1:0"))
    assert (job["att"], job["node"], job["pool"], job["st"], job["dl"]) == (
        "1",
        "n1",
        "auto+en+zh",
        "run",
        str(deadline),
    )
    assert (await cell.hash(cell.keys.node("n1")))["run"] == "1"


async def test_step1_a_repeated_finalize_creates_no_second_job(cell: Cell) -> None:
    await cell.step(node("n1", max_concurrency=4), session("s1"))
    await cell.step(finalize("s1", 0), finalize("s1", 0))
    cell.advance(10)
    await cell.step(finalize("s1", 0))
    assert len(await cell.decisions()) == 1
    assert len(await cell.inbox("n1")) == 1
    assert (await cell.hash(cell.keys.node("n1")))["run"] == "1"


async def test_step2_the_rate_limit_counts_job_creations_in_event_time(cell: Cell) -> None:
    await cell.configure(rate_per_s=10, rate_burst=3)
    await cell.step(node("n1", max_concurrency=50), session("s1"))
    await cell.step(*(finalize("s1", i) for i in range(4)))
    assert [d["k"] for d in await cell.decisions()] == ["d", "d", "d", "x"]
    assert (await cell.decisions("x"))[0]["reason"] == "rate_limited"
    cell.advance(99)  # 0.99 of a token: still limited
    await cell.step(finalize("s1", 4))
    assert (await cell.decisions())[-1]["reason"] == "rate_limited"
    cell.advance(1)  # one token refilled at 10/s after 100 ms
    await cell.step(finalize("s1", 5), finalize("s1", 6))
    assert [d["k"] for d in (await cell.decisions())[-2:]] == ["d", "x"]
    # A limited utterance still ends in order: its rejection waits for the jobs before it.
    assert await cell.outputs("s1") == []
    await cell.step(*(ok(f"s1:{i}", 1, "n1") for i in range(3)))
    outputs = await cell.outputs("s1")
    assert [(o["idx"], o["st"], o["reason"]) for o in outputs] == [
        ("0", "ok", ""),
        ("1", "ok", ""),
        ("2", "ok", ""),
        ("3", "rejected", "rate_limited"),
        ("4", "rejected", "rate_limited"),
    ]


async def test_step3_a_session_keeps_to_its_pool_while_that_pool_can_serve(cell: Cell) -> None:
    # Two pools serve en>zh; the session is bound to the first one it ran in.
    await cell.step(
        node("a1", langs=("en", "zh"), max_concurrency=2),
        node("b1", langs=("en", "ja", "zh"), max_concurrency=8),
        session("s1"),
    )
    await cell.step(finalize("s1", 0))
    first_pool = (await cell.decisions("d"))[0]["pool"]
    assert first_pool == "auto+en+ja+zh"  # the index's order: pool names sorted
    assert (await cell.hash(cell.keys.session("s1")))["pool"] == first_pool
    # b1 now carries load but stays preferred over the idle a1 while it has room.
    await cell.step(finalize("s1", 1))
    assert (await cell.decisions("d"))[1]["node"] == "b1"
    # When the preferred pool cannot serve, the job falls back and the binding moves.
    await cell.step(NodeDraining(node_id="b1"))
    await cell.step(finalize("s1", 2))
    assert (await cell.decisions("d"))[2]["pool"] == "auto+en+zh"
    assert (await cell.hash(cell.keys.session("s1")))["pool"] == "auto+en+zh"


async def test_step4_configured_pools_are_tried_in_their_order(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.step(
        PoolsConfigured(
            pools=[
                Pool(name="zz-first", languages=["en", "zh"], order=1),
                Pool(name="aa-second", languages=["en", "zh"], order=2),
            ]
        ),
        node("n1", max_concurrency=1),
        node("n2", langs=("en", "zh", "ja"), max_concurrency=1),
        session("s1"),
        session("s2"),
        session("s3"),
    )
    index = await cell.hash(cell.keys.lang_index)
    assert index["en>zh"] == "zz-first,aa-second"
    assert "en>ja" not in index  # no configured pool holds both languages
    # Both nodes are in both pools; the first pool's least-loaded node wins, then the other.
    await cell.step(finalize("s1", 0), finalize("s2", 0), finalize("s3", 0))
    decisions = await cell.decisions()
    assert [(d.get("node"), d.get("pool"), d.get("reason")) for d in decisions] == [
        ("n1", "zz-first", None),
        ("n2", "zz-first", None),
        (None, None, "no_capacity"),
    ]


async def test_step4_no_pool_for_the_pair_is_rejected_as_no_pool(cell: Cell) -> None:
    await cell.step(node("n1"), session("s1", "de", "fr"))
    await cell.step(finalize("s1", 0))
    [rejection] = await cell.decisions("x")
    assert rejection["reason"] == "no_pool"
    [delivered] = await cell.outputs("s1")
    assert (delivered["st"], delivered["reason"]) == ("rejected", "no_pool")


async def test_pools_configured_replaces_auto_pools_and_an_empty_list_restores_them(
    cell: Cell,
) -> None:
    await cell.step(node("n1"), node("n2", langs=("en", "ja")))
    assert set(await cell.hash(cell.keys.pools)) == {"auto+en+zh", "auto+en+ja"}
    await cell.step(PoolsConfigured(pools=[Pool(name="main", languages=["en", "zh"])]))
    assert await cell.hash(cell.keys.pools) == {"main": "0|en,zh"}
    assert [m for m, _ in await cell.pool_members("main")] == ["n1"]
    assert await cell.pool_members("auto+en+zh") == []
    await cell.step(PoolsConfigured(pools=[]))
    assert set(await cell.hash(cell.keys.pools)) == {"auto+en+zh", "auto+en+ja"}
    assert await cell.pool_members("main") == []
    assert [m for m, _ in await cell.pool_members("auto+en+ja")] == ["n2"]


async def test_step5_a_draining_node_gets_no_new_jobs(cell: Cell) -> None:
    await cell.step(node("n1"), node("n2"), session("s1"))
    await cell.step(NodeDraining(node_id="n1"))
    await cell.step(finalize("s1", 0))
    assert (await cell.decisions("d"))[0]["node"] == "n2"


async def test_step5_an_undrained_node_gets_jobs_again(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.step(node("n1"), session("s1"), NodeDraining(node_id="n1"))
    await cell.step(finalize("s1", 0))
    assert (await cell.decisions())[-1]["reason"] == "no_capacity"
    await cell.step(NodeUndrained(node_id="n1"), NodeUndrained(node_id="ghost"))
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "up"
    assert [d["reason"] for d in await cell.dlq()] == ["unknown_node"]
    cell.advance(200)
    await cell.step(finalize("s1", 1))
    assert (await cell.decisions())[-1]["node"] == "n1"
    # Lost while draining, undrained, back: up, not draining.
    await cell.step(NodeDraining(node_id="n1"))
    cell.advance(cell.settings.node_lost_ms + 1)
    await cell.step(Tick())
    await cell.step(NodeUndrained(node_id="n1"))
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "lost"
    await cell.step(beat("n1"))
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "up"


async def test_step5_a_node_with_a_stale_heartbeat_is_skipped(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.configure(heartbeat_fresh_ms=5000)
    await cell.step(node("n1"), session("s1"))
    cell.advance(3000)
    await cell.step(node("n2"))
    cell.advance(2001)  # n1 last beat 5001 ms ago, n2 2001 ms ago
    await cell.step(finalize("s1", 0))
    assert (await cell.decisions("d"))[0]["node"] == "n2"
    cell.advance(3000)  # both stale now
    await cell.step(finalize("s1", 1))
    assert (await cell.decisions())[-1]["reason"] == "no_capacity"
    await cell.step(beat("n1"))
    await cell.step(finalize("s1", 2))
    assert (await cell.decisions())[-1]["node"] == "n1"


@pytest.mark.parametrize("overload", [{"cpu": 96}, {"gpu": 99}, {"mem": 100}])
async def test_step5_an_overloaded_node_leaves_its_pool_until_it_recovers(
    cell: Cell, overload: dict[str, int]
) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.step(node("n1"), session("s1"))
    await cell.step(beat("n1", **overload))
    assert await cell.pool_members("auto+en+zh") == []
    await cell.step(finalize("s1", 0))
    assert (await cell.decisions())[-1]["reason"] == "no_capacity"
    await cell.step(beat("n1", cpu=95, gpu=95, mem=95))  # at the threshold is not over it
    assert [m for m, _ in await cell.pool_members("auto+en+zh")] == ["n1"]
    await cell.step(finalize("s1", 1))
    assert (await cell.decisions())[-1]["node"] == "n1"


async def test_step5_a_node_must_serve_every_stage_of_the_pair(cell: Cell) -> None:
    # Same pool (semantic en+zh), but n1 has no zh TTS and n2 no en ASR.
    await cell.step(
        node("n1", tts=("en",)),
        node("n2", asr=("zh",)),
        node("n3"),
        session("s1"),
    )
    await cell.step(finalize("s1", 0))
    assert (await cell.decisions("d"))[0]["node"] == "n3"


async def test_step5_a_node_serving_every_pair_of_its_languages_serves_no_other(
    cell: Cell,
) -> None:
    # n1 is pooled by en, ja and zh but serves only en<>zh (its record: every pair of en
    # and zh); n2 serves en>ja too, n3 only en>ja of the three (its record lists it).
    await cell.step(
        node("n1", langs=("en", "zh"), semantic=("en", "ja", "zh")),
        node("n2", langs=("en", "ja", "zh")),
        node("n3", langs=("en", "ja"), asr=("en",), tts=("ja",), semantic=("en", "ja", "zh")),
        session("s1", "en", "ja"),
        session("s2", "en", "ja"),
        session("s3", "en", "ja"),
    )
    assert (await cell.hash(cell.keys.node("n1")))["pairs"] == "*,en,zh,"
    assert (await cell.hash(cell.keys.node("n3")))["pairs"] == ",en>ja,"
    await cell.step(finalize("s1", 0), finalize("s2", 0), finalize("s3", 0))
    assert sorted(d["node"] for d in await cell.decisions("d")) == ["n2", "n2", "n3"]


async def test_step5_heartbeats_from_unknown_nodes_are_dead_lettered(cell: Cell) -> None:
    await cell.step(beat("ghost"), NodeDraining(node_id="ghost"), node("n1"))
    dead = await cell.dlq()
    assert [d["reason"] for d in dead] == ["unknown_node", "unknown_node"]
    assert '"node_id":"ghost"' in dead[0]["f:e"]
    assert (await cell.hash(cell.keys.node("n1")))["st"] == "up"  # later entries applied


async def test_step6_the_least_loaded_node_wins_ties_by_node_id(cell: Cell) -> None:
    await cell.step(
        node("n2", max_concurrency=4),
        node("n1", max_concurrency=4),
        node("n3", max_concurrency=2),
        *(session(f"s{i}") for i in range(6)),
    )
    await cell.step(*(finalize(f"s{i}", 0) for i in range(6)))
    # load = running / max_concurrency: n1 0/4, n2 0/4, n3 0/2 -> n1 (id), n2, n3,
    # then n1 1/4 = n2 1/4 < n3 1/2 -> n1, n2, then all at 2/4 = 1/2 -> n1.
    assert [d["node"] for d in await cell.decisions("d")] == ["n1", "n2", "n3", "n1", "n2", "n1"]
    assert await cell.pool_members("auto+en+zh") == [("n2", 500.0), ("n3", 500.0), ("n1", 750.0)]


async def test_step7_a_full_node_is_never_overcommitted(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.step(node("n1", max_concurrency=1), session("s1"), session("s2"))
    await cell.step(finalize("s1", 0), finalize("s2", 0))
    assert [d["k"] for d in await cell.decisions()] == ["d", "x"]
    assert (await cell.decisions("x"))[0]["reason"] == "no_capacity"
    assert (await cell.hash(cell.keys.node("n1")))["run"] == "1"
    await cell.step(ok("s1:0", 1, "n1"))
    assert (await cell.hash(cell.keys.node("n1")))["run"] == "0"
    await cell.step(finalize("s2", 1))
    assert (await cell.decisions())[-1]["k"] == "d"


async def test_a_result_releases_the_slot_and_is_delivered(cell: Cell) -> None:
    await cell.step(node("n1", max_concurrency=1), session("s1"))
    await cell.step(finalize("s1", 0))
    cell.advance(500)
    await cell.step(ok("s1:0", 1, "n1", tts_ms=1200))
    [delivered] = await cell.outputs("s1")
    assert delivered == {
        "idx": "0",
        "st": "ok",
        "reason": "",
        "err": "",
        "cut": "pause",
        "job": "s1:0",
        "att": "1",
        "node": "n1",
        "asr": "asr s1:0",
        "nmt": "nmt s1:0",
        "tts": "tts/s1:0",
        "tts_ms": "1200",
        "timings": '{"asr_ms":0,"nmt_ms":0,"tts_ms":0}',
        "grp": "1",
        "at": f"{cell.now_ms}-0",
    }
    assert [m for m in await cell.pool_members("auto+en+zh")] == [("n1", 0.0)]
    release = (await cell.decisions("r"))[0]
    assert (release["ok"], release["node"]) == ("1", "n1")


async def test_old_attempts_and_duplicate_results_change_nothing(cell: Cell) -> None:
    await cell.step(node("n1"), node("n2"), session("s1"))
    await cell.step(finalize("s1", 0))
    await cell.step(error("s1:0", 1, "n1"))  # retried as attempt 2 on n2
    before = (await cell.decisions(), await cell.hash(cell.keys.node("n2")))
    await cell.step(ok("s1:0", 1, "n1"), error("s1:0", 1, "n1"))
    assert (await cell.decisions(), await cell.hash(cell.keys.node("n2"))) == before
    await cell.step(ok("s1:0", 2, "n2"))
    await cell.step(ok("s1:0", 2, "n2"))
    assert len(await cell.outputs("s1")) == 1
    assert (await cell.hash(cell.keys.node("n2")))["run"] == "0"


async def test_an_error_is_retried_at_once_on_another_node(cell: Cell) -> None:
    await cell.step(node("n1"), node("n2"), session("s1"))
    await cell.step(finalize("s1", 0))
    await cell.step(error("s1:0", 1, "n1"))
    dispatches = await cell.decisions("d")
    assert [(d["att"], d["node"]) for d in dispatches] == [("1", "n1"), ("2", "n2")]
    [handed] = await cell.inbox("n2")
    assert (handed["job"], handed["att"]) == ("s1:0", "2")
    assert (await cell.hash(cell.keys.node("n1")))["run"] == "0"


async def test_a_retry_never_returns_to_the_node_that_failed_it(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.step(node("n1"), session("s1"))
    await cell.step(finalize("s1", 0))
    await cell.step(error("s1:0", 1, "n1"))
    [failure] = await cell.decisions("f")
    assert (failure["reason"], failure["err"]) == ("no_capacity", "MODEL_NOT_AVAILABLE")
    [delivered] = await cell.outputs("s1")
    assert (delivered["st"], delivered["reason"], delivered["err"]) == (
        "failed",
        "no_capacity",
        "MODEL_NOT_AVAILABLE",
    )


async def test_retries_stop_at_max_attempts_and_the_failure_is_delivered(cell: Cell) -> None:
    await cell.configure(max_attempts=2)
    await cell.step(node("n1"), node("n2"), node("n3"), session("s1"))
    await cell.step(finalize("s1", 0))
    await cell.step(error("s1:0", 1, "n1"))
    await cell.step(error("s1:0", 2, "n2", code="CUDA_OOM"))
    assert len(await cell.decisions("d")) == 2
    [delivered] = await cell.outputs("s1")
    assert (delivered["st"], delivered["reason"], delivered["err"], delivered["att"]) == (
        "failed",
        "retries_exhausted",
        "CUDA_OOM",
        "2",
    )
    for node_id in ("n1", "n2"):
        assert (await cell.hash(cell.keys.node(node_id)))["run"] == "0"


async def test_results_for_unknown_jobs_or_from_the_not_owner_are_dead_lettered(
    cell: Cell,
) -> None:
    await cell.step(node("n1"), node("n2"), session("s1"))
    await cell.step(finalize("s1", 0))
    await cell.step(ok("s1:7", 1, "n1"), ok("s1:0", 1, "n2"))
    assert [d["reason"] for d in await cell.dlq()] == ["unknown_job", "not_owner"]
    assert (await cell.hash(cell.keys.job("s1:0")))["st"] == "run"


async def test_a_deregistered_node_hands_its_jobs_to_other_nodes(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.step(node("n1"), session("s1"), session("s2"))
    await cell.step(finalize("s1", 0), finalize("s2", 0))
    await cell.step(node("n2", max_concurrency=1))
    await cell.step(NodeDeregistered(node_id="n1"))
    assert [(d["job"], d["att"], d["node"]) for d in (await cell.decisions("d"))[2:]] == [
        ("s1:0", "2", "n2")
    ]
    [failure] = await cell.decisions("f")  # n2 had one slot for two jobs
    assert (failure["job"], failure["reason"], failure["err"]) == (
        "s2:0",
        "no_capacity",
        "NODE_LEFT",
    )
    assert await cell.pool_members("auto+en+zh") == [("n2", 1000.0)]


async def output_entries(cell: Cell, session_id: str) -> list[tuple[str, dict[str, str]]]:
    return [entry async for entry in read_stream(cell.client, cell.keys.output(session_id))]


@pytest.mark.parametrize(
    ("opened", "closed", "reason"),
    [(False, False, "unknown_session"), (True, True, "session_closed")],
)
async def test_finalizes_for_unknown_or_closed_sessions_are_noticed_to_the_gateway(
    cell: Cell, opened: bool, closed: bool, reason: str
) -> None:
    from eventsched.model.events import SessionClosed

    await cell.step(node("n1"))
    if opened:
        await cell.step(session("s1"))
    if closed:
        await cell.step(SessionClosed(session_id="s1"))
    await cell.step(finalize("s1", 4), finalize("s1", 4))
    assert [d["reason"] for d in await cell.dlq()] == [reason, reason]
    assert [(d["k"], d["idx"], d["reason"]) for d in await cell.decisions()] == [
        ("n", "4", reason),
        ("n", "4", reason),
    ]
    # The gateway reads outputs only: the notices are there, the second after the first.
    entries = await output_entries(cell, "s1")
    assert [(i, f["st"], f["reason"], f["idx"]) for i, f in entries] == [
        ("5-0", "notice", reason, "4"),
        ("5-1", "notice", reason, "4"),
    ]


async def test_a_late_utterance_is_served_and_delivered_after_the_later_ones(cell: Cell) -> None:
    """Redis lost utterance 1's finalize (a crash cut the AOF), 2 went on; the gateway
    sends 1 again: it is a job like any other, its outcome after 2's."""
    await cell.step(node("n1", max_concurrency=4), session("s1"))
    await cell.step(finalize("s1", 0), finalize("s1", 2))
    await cell.step(ok("s1:0", 1, "n1"), ok("s1:2", 1, "n1"))
    await cell.step(finalize("s1", 1))
    assert [d["job"] for d in await cell.decisions("d")] == ["s1:0", "s1:2", "s1:1"]
    await cell.step(finalize("s1", 1))  # now a repeat: ignored
    await cell.step(ok("s1:1", 1, "n1"))
    entries = await output_entries(cell, "s1")
    assert [(i, f["idx"], f["st"]) for i, f in entries] == [
        ("1-0", "0", "ok"),
        ("3-0", "2", "ok"),
        ("3-1", "1", "ok"),
    ]
    await cell.step(finalize("s1", 3))  # back at its own place
    await cell.step(ok("s1:3", 1, "n1"))
    assert (await output_entries(cell, "s1"))[-1][0] == "4-0"
    assert await cell.dlq() == []


async def test_step5_the_gpu_threshold_passes_over_a_node_without_a_gpu(cell: Cell) -> None:
    await cell.configure(gpu_max_pct=50)
    await cell.step(node("busy"), node("cpu-only"), session("s1"))
    no_gpu = NodeHeartbeat(node_id="cpu-only", cpu_pct=10, gpu_pct=None, mem_pct=10)
    await cell.step(beat("busy", gpu=90), no_gpu)
    await cell.step(finalize("s1", 0))
    assert (await cell.decisions("d"))[0]["node"] == "cpu-only"
    assert (await cell.hash(cell.keys.node("cpu-only")))["gpu"] == ""
