"""The benchmarks compare like with like: the old design's path (bench/baseline.py)
decides as eventsched does over the same state, so its cost is the cost of the same
decision made the old way."""

from __future__ import annotations

import pytest

from bench import baseline
from bench.run import PARTS, TARGETS, markdown
from eventsched.model.keys import CellKeys
from tests.conftest import remove_namespace
from tests.harness import Cell, beat, error, finalize, node, session

pytestmark = pytest.mark.anyio


async def _cell_with_choices(cell: Cell) -> None:
    """n1 overloaded, n2 half busy, n3 idle but held off en>zh (MODEL_NOT_AVAILABLE),
    n5 a quarter busy (the retry of n3's job), n4 serving another pair."""
    await cell.step(
        node("n1", max_concurrency=2),
        node("n2", max_concurrency=2),
        node("n3", max_concurrency=4),
        node("n4", langs=("en", "ja")),
        node("n5", max_concurrency=4),
        session("s1"),
        session("s2"),
        session("s3"),
    )
    await cell.step(beat("n1", cpu=99), finalize("s1", 0), finalize("s3", 0))
    await cell.step(error("s3:0", 1, "n3"))


async def test_the_old_path_picks_what_eventsched_picks(cell: Cell) -> None:
    twin = Cell(cell.client, CellKeys("c0", f"{cell.keys.namespace}twin"))
    try:
        for each in (cell, twin):
            await _cell_with_choices(each)
        assert await cell.dispatched_to() == {"s1:0": "n2", "s3:0": "n5"}
        await cell.step(finalize("s2", 0))
        ours = (await cell.dispatched_to())["s2:0"]
        reserve = twin.client.register_script(baseline._TRY_RESERVE)
        theirs = await baseline.dispatch(
            twin.client, twin.keys, reserve, "s2", 0, twin.settings, now_ms=twin.now_ms
        )
        assert ours == theirs == "n5"  # the least loaded that is up and may serve en>zh
        assert (await twin.hash(twin.keys.node("n5")))["run"] == "2"
    finally:
        await remove_namespace(cell.client, twin.keys.namespace)


def test_the_markdown_table_judges_each_figure_by_its_target() -> None:
    targeted = {name: target for name, _, target in TARGETS}
    figures = {"apply_dispatch_per_s": targeted["apply_dispatch_per_s"] - 1, "untargeted": 3.5}
    figures["dispatch_redis_us_100k"] = targeted["dispatch_redis_us_100k"]  # at the bound
    lines = markdown(figures).splitlines()
    assert lines[:2] == ["| figure | value | target | |", "| --- | ---: | ---: | --- |"]
    assert lines[2].startswith("| `apply_dispatch_per_s` |") and lines[2].endswith("| MISSED |")
    assert lines[3] == "| `untargeted` | 3.5 |  |  |"
    assert lines[4].endswith(f"| <= {targeted['dispatch_redis_us_100k']} | met |")
    assert len({name for name, _ in PARTS}) == len(PARTS)  # each part named once


def test_the_table_of_two_runs_says_in_how_many_a_target_was_met() -> None:
    bound = {name: target for name, _, target in TARGETS}["apply_dispatch_per_s"]
    first = {"apply_dispatch_per_s": bound, "untargeted": 1.0}
    second = {"apply_dispatch_per_s": bound - 1, "untargeted": 2.0}
    lines = markdown(first, second).splitlines()
    assert lines[0] == "| figure | run 1 | run 2 | target | |"
    assert (
        lines[2]
        == f"| `apply_dispatch_per_s` | {bound} | {bound - 1} | >= {bound} | met in 1 of 2 |"
    )
    assert lines[3] == "| `untargeted` | 1.0 | 2.0 |  |  |"
    assert markdown(second, second).splitlines()[2].endswith("| MISSED |")
