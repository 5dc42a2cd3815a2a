"""The projection readers decode what apply.lua wrote."""

from __future__ import annotations

import pytest

from eventsched.model.events import NodeDraining
from eventsched.projections import read_node, read_outcomes, read_session, read_snapshot
from tests.harness import Cell, error, finalize, node, ok, session

pytestmark = pytest.mark.anyio


async def test_the_snapshot_reads_nodes_pools_and_the_index(cell: Cell) -> None:
    await cell.step(node("n1", max_concurrency=4), node("n2", langs=("en", "ja")), session("s1"))
    await cell.step(finalize("s1", 0), NodeDraining(node_id="n2"))
    snapshot = await read_snapshot(cell.client, cell.keys)
    assert snapshot.mode == "auto" and snapshot.node_count == 2
    assert snapshot.applied == (await cell.hash(cell.keys.meta))["applied"]
    assert [(p.name, p.languages, p.members) for p in snapshot.pools] == [
        ("auto+en+ja", ("en", "ja"), ()),
        ("auto+en+zh", ("en", "zh"), (("n1", 250),)),
    ]
    assert snapshot.lang_index == {
        "en>ja": ("auto+en+ja",),
        "ja>en": ("auto+en+ja",),
        "en>zh": ("auto+en+zh",),
        "zh>en": ("auto+en+zh",),
    }
    n1, n2 = (
        await read_node(cell.client, cell.keys, "n1"),
        await read_node(cell.client, cell.keys, "n2"),
    )
    assert n1 is not None and (n1.state, n1.running, n1.max_concurrency, n1.in_pools) == (
        "up",
        1,
        4,
        True,
    )
    assert n1.pairs == ("en>zh", "zh>en") and n1.heartbeat_ms == cell.now_ms
    assert n2 is not None and (n2.state, n2.in_pools) == ("drain", False)
    assert await read_node(cell.client, cell.keys, "nobody") is None


async def test_the_session_view_and_its_outcomes(cell: Cell) -> None:
    await cell.configure(max_attempts=1)
    await cell.step(node("n1", max_concurrency=4), session("s1"))
    await cell.step(*(finalize("s1", i, reason="max_length") for i in range(3)))
    cell.advance(100)
    await cell.step(ok("s1:0", 1, "n1", tts_ms=900), error("s1:2", 1, "n1"))
    view = await read_session(cell.client, cell.keys, "s1")
    assert view is not None
    assert (view.src_lang, view.tgt_lang, view.preferred_pool) == ("en", "zh", "auto+en+zh")
    assert (view.last_delivered, view.in_flight) == (0, (1, 2))
    assert view.group is not None and view.group.asr_text == "asr s1:0"
    assert view.tts_playing(cell.now_ms + 899) and not view.tts_playing(cell.now_ms + 900)
    await cell.step(ok("s1:1", 1, "n1"))
    outcomes = await read_outcomes(cell.client, cell.keys, "s1")
    assert [(o.utterance_index, o.status, o.attempt) for o in outcomes] == [
        (0, "ok", 1),
        (1, "ok", 1),
        (2, "failed", 1),
    ]
    assert outcomes[0].tts_duration_ms == 900 and outcomes[2].error_code == "MODEL_NOT_AVAILABLE"
    later = await read_outcomes(cell.client, cell.keys, "s1", after_index=0)
    assert [o.utterance_index for o in later] == [1, 2]
    assert await read_session(cell.client, cell.keys, "nobody") is None
