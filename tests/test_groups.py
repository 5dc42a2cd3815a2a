"""Group state: outcomes reach each session strictly in utterance order, whatever order
results arrive in; conversation groups and the TTS playback window."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventsched.model.keys import CellKeys
from eventsched.store.client import Store
from tests.conftest import new_namespace, remove_namespace
from tests.harness import Cell, error, finalize, node, ok, session


async def _ordering_scenario(
    store_url: str, total: int, dispatched: int, arrival: list[int], failing: list[bool]
) -> None:
    client = Store(store_url).client()
    namespace = new_namespace()
    cell = Cell(client, CellKeys("c0", namespace))
    await cell.configure(rate_burst=100, max_attempts=1, queue_wait_ms=0)
    try:
        # The node has a slot for each of the first `dispatched` utterances; the rest are
        # rejected at once (no_capacity, or no_pool when there is no node at all).
        if dispatched:
            await cell.step(node("n1", max_concurrency=dispatched))
        await cell.step(session("s1"))
        await cell.step(*(finalize("s1", i) for i in range(total)))
        ended = set(range(dispatched, total))
        for index in arrival:
            result = error if failing[index] else ok
            await cell.step(result(f"s1:{index}", 1, "n1"))
            ended.add(index)
            prefix = 0
            while prefix in ended:
                prefix += 1
            delivered = [int(o["idx"]) for o in await cell.outputs("s1")]
            assert delivered == list(range(prefix))  # exactly the ended prefix, in order
        outputs = await cell.outputs("s1")
        assert [int(o["idx"]) for o in outputs] == list(range(total))
        expected = [
            "rejected" if i >= dispatched else "failed" if failing[i] else "ok"
            for i in range(total)
        ]
        assert [o["st"] for o in outputs] == expected
        assert await client.exists(cell.keys.held("s1", 0)) == 0
        assert await client.zcard(cell.keys.in_flight("s1")) == 0
    finally:
        await remove_namespace(client, namespace)
        await client.aclose()


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[int, int, list[int], list[bool]]:
    total = draw(st.integers(1, 7))
    dispatched = draw(st.integers(0, total))
    arrival = draw(st.permutations(list(range(dispatched))))
    failing = draw(st.lists(st.booleans(), min_size=total, max_size=total))
    return total, dispatched, list(arrival), failing


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=arrivals())
def test_outcomes_are_delivered_in_utterance_order_under_any_arrival_order(
    store_url: str, case: tuple[int, int, list[int], list[bool]]
) -> None:
    anyio.run(_ordering_scenario, store_url, *case)


@pytest.mark.anyio
async def test_groups_collect_a_turn_and_track_tts_playback(cell: Cell) -> None:
    await cell.configure(queue_wait_ms=0)  # nowhere to go: at once, no wait
    await cell.step(node("n1", max_concurrency=8), session("s1"))
    cuts = ["max_length", "max_length", "pause", "client"]
    await cell.step(*(finalize("s1", i, reason=cut) for i, cut in enumerate(cuts)))
    cell.advance(1000)
    await cell.step(ok("s1:1", 1, "n1", tts_ms=700))  # held: 0 is not done
    assert await cell.hash(cell.keys.group("s1")) == {}
    cell.advance(100)
    await cell.step(ok("s1:0", 1, "n1", tts_ms=500))  # delivers 0 and 1 at this time
    group = await cell.hash(cell.keys.group("s1"))
    assert (group["gid"], group["n"], group["ended"]) == ("1", "2", "0")
    assert group["asr"] == "asr s1:0 asr s1:1"
    assert group["nmt"] == "nmt s1:0 nmt s1:1"
    assert int(group["tts_until"]) == cell.now_ms + 500 + 700  # played back to back
    await cell.step(error("s1:2", 1, "n1"))  # retried on n1? no: excluded, so it fails
    group = await cell.hash(cell.keys.group("s1"))
    assert (group["gid"], group["n"], group["ended"]) == ("1", "3", "1")
    cell.advance(5000)
    await cell.step(ok("s1:3", 1, "n1", tts_ms=300))
    group = await cell.hash(cell.keys.group("s1"))
    assert (group["gid"], group["n"], group["asr"]) == ("2", "1", "asr s1:3")
    assert int(group["tts_until"]) == cell.now_ms + 300  # the earlier window had ended
    assert [o["grp"] for o in await cell.outputs("s1")] == ["1", "1", "1", "2"]


@pytest.mark.anyio
async def test_a_group_is_cut_at_its_size_limit(cell: Cell) -> None:
    await cell.configure(group_max_utterances=2)
    await cell.step(node("n1", max_concurrency=8), session("s1"))
    await cell.step(*(finalize("s1", i, reason="max_length") for i in range(5)))
    await cell.step(*(ok(f"s1:{i}", 1, "n1") for i in range(5)))
    assert [o["grp"] for o in await cell.outputs("s1")] == ["1", "1", "2", "2", "3"]
