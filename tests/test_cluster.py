"""Redis Cluster, the start of it (issue 19): every replay fixture played through a
``redis+cluster://`` store, the real worker and scripts on a real 3-master cluster, gives
its golden byte for byte, with cells whose hash tags land on different masters; and
``verify`` passes there. Every key of a cell shares the tag ``{cell}``, so each script and
pipeline stays in one slot (a CROSSSLOT error would fail these)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.cluster
from eventsched.cli.app import app
from redis.crc import key_slot
from typer.testing import CliRunner

from eventsched.model.keys import CellKeys
from eventsched.ops.replay import check, golden_path, load_fixture, play, replay
from eventsched.ops.verify import verify_cell
from eventsched.store.client import Store, unlink_matching
from tests.conftest import new_namespace
from tests.servers import private_cluster

FIXTURES = sorted((Path(__file__).parent.parent / "replay_fixtures").glob("*.jsonl"))

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed"),
]


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
async def test_each_fixture_replays_to_its_golden_on_a_cluster(
    cluster_url: str, path: Path
) -> None:
    result = await replay(load_fixture(path), cluster_url, batch=7)
    assert check(result, golden_path(path).read_text(encoding="utf-8")) is None


async def test_cells_on_different_masters_each_verify(cluster_url: str) -> None:
    client = Store(cluster_url).client()
    namespace = new_namespace()
    fixture = load_fixture(FIXTURES[0])
    cells = [CellKeys(name, namespace) for name in ("c0", "c1", "c2", "c3")]
    try:
        await client.ping()  # the client learns the slots' masters
        masters = {client.get_node_from_key(keys.log).port for keys in cells}  # type: ignore[attr-defined]
        assert len(masters) >= 2, "the cells' tags should land on more than one master"
        for keys in cells:
            fixture.cell = keys.cell
            await play(client, keys, fixture)
            report = await verify_cell(client, keys)
            assert report.ok, (keys.cell, report.problems)
    finally:
        await unlink_matching(client, f"{namespace}:*")
        await client.aclose()


def test_cells_are_found_on_every_master_with_their_slots(cluster_url: str) -> None:
    namespace = new_namespace()
    client = redis.cluster.RedisCluster.from_url(
        cluster_url.replace("redis+cluster://", "redis://").split(",")[0]
    )
    try:
        for cell in ("c0", "c1", "c2", "c3"):
            client.xadd(CellKeys(cell, namespace).log, {"e": "{}"})
        shown = CliRunner().invoke(
            app, ["cells", "--redis-url", cluster_url, "--namespace", namespace, "--json"]
        )
        assert shown.exit_code == 0, shown.output
        rows = json.loads(shown.stdout)
        assert [row["cell"] for row in rows] == ["c0", "c1", "c2", "c3"]
        assert [row["slot"] for row in rows] == [
            key_slot(CellKeys(c, namespace).log.encode()) for c in ("c0", "c1", "c2", "c3")
        ]
        assert len({row["master"] for row in rows}) >= 2  # the tags land on different masters
    finally:
        for cell in ("c0", "c1", "c2", "c3"):
            client.delete(CellKeys(cell, namespace).log)
        client.close()
