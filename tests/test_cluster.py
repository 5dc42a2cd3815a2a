"""Redis Cluster (issue 19), as a third store beside fakeredis and one Redis: every
replay fixture played through a ``redis+cluster://`` store on a real 3-master cluster
gives its golden byte for byte; a load over cells whose hash tags land on different
masters, with workers sharing the cells, SDK nodes and a gateway choosing cells from the
directory, loses nothing and verifies per cell, also through the CLI; and the drill
(scripts/cluster-drill, smaller) kills a master mid-run. Every key of a cell shares the
tag ``{cell}``, so each script and pipeline stays in one slot (a CROSSSLOT error would
fail these)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.cluster
from eventsched.cli.app import app
from redis.crc import key_slot
from typer.testing import CliRunner

from eventsched.dispatch.worker import Worker
from eventsched.model.keys import ROLES, CellKeys, NamespaceKeys
from eventsched.ops.replay import check, golden_path, load_fixture, play, replay
from eventsched.ops.verify import verify_cell
from eventsched.projections.directory import list_in_directory
from eventsched.sim.loadgen import LoadSpec, run_load
from eventsched.store.client import Store, principal_of, unlink_matching
from eventsched.store.scripts import lua_source
from eventsched.store.streams import text
from tests.conftest import new_namespace

FIXTURES = sorted((Path(__file__).parent.parent / "replay_fixtures").glob("*.jsonl"))

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed"),
]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
async def test_each_fixture_replays_to_its_golden_on_a_cluster(
    cluster_url: str, path: Path
) -> None:
    fixture = load_fixture(path)
    # Eight cells (c0..c7), whose tags land on all three masters: a command that mixed
    # two cells' keys, or a cell's with a namespace key, would fail with CROSSSLOT.
    fixture.cell = f"c{FIXTURES.index(path) % 8}"
    result = await replay(fixture, cluster_url, batch=7)
    assert check(result, golden_path(path).read_text(encoding="utf-8")) is None


async def test_scripts_flushed_from_every_master_are_loaded_again(cluster_url: str) -> None:
    """What a replica promoted by a failover may look like: no script loaded (nor, when
    it was not yet a replica when the library was loaded, the library). redis-py answers
    NOSCRIPT by loading the script and running the call again; Library does the same on
    a function it does not find, loading it on every master."""
    path = FIXTURES[0]
    await replay(load_fixture(path), cluster_url, batch=7)
    groups_sha = hashlib.sha1(lua_source("groups").encode()).hexdigest()
    sync = Store(cluster_url).sync_client()
    try:
        assert sync.script_exists(groups_sha) == [True]
        sync.script_flush()  # every master (redis-py sends SCRIPT FLUSH to all primaries)
        sync.function_flush()  # every master too
        assert sync.script_exists(groups_sha) == [False]
        listed: Any = sync.function_list()  # on a cluster, what each master has
        assert not any(listed.values())
    finally:
        sync.close()
    again = await replay(load_fixture(path), cluster_url, batch=7)
    assert check(again, golden_path(path).read_text(encoding="utf-8")) is None


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


async def test_a_load_over_cells_on_several_masters_with_shared_workers(cluster_url: str) -> None:
    namespace = new_namespace()
    cells = [CellKeys(f"c{i}", namespace) for i in range(4)]
    client = Store(cluster_url).client()
    sync = Store(cluster_url).sync_client()
    await client.ping()  # the client learns the slots' masters
    masters = {client.get_node_from_key(keys.log).port for keys in cells}  # type: ignore[attr-defined]
    assert len(masters) >= 2, "the cells' tags should land on more than one master"
    spec = LoadSpec(nodes=10, sessions=12, utterances=5, flaky_share=0, mortal_share=0)
    workers = [
        Worker(client, [], name, lease_ms=600, block_ms=50, tick_ms=100, all_cells_of=namespace)
        for name in ("wa", "wb")
    ]
    stop = anyio.Event()
    try:
        await list_in_directory(client, cells)
        async with anyio.create_task_group() as group:
            for worker in workers:
                group.start_soon(worker.run, stop)
            report = await run_load(client, cells, spec)
            holders = {text(sync.get(keys.lease(role)) or b"") for keys in cells for role in ROLES}
            stop.set()
        assert holders == {"wa", "wb"}, "both workers held roles"
        expected = spec.sessions * spec.utterances
        assert (report.finalized, report.delivered, report.lost) == (expected, expected, 0)
        assert (report.duplicate_jobs, report.max_overcommit, report.out_of_order) == (0, 0, 0)
        assert report.completed > 0
        for keys in cells:  # the CLI runs its own event loop: in a thread of its own
            args = [
                "verify",
                "--redis-url",
                cluster_url,
                "--namespace",
                namespace,
                "--cell",
                keys.cell,
            ]
            verified = await anyio.to_thread.run_sync(CliRunner().invoke, app, args)
            assert verified.exit_code == 0, verified.output
    finally:
        await unlink_matching(client, f"{namespace}:*")
        await client.delete(NamespaceKeys(namespace).workers, NamespaceKeys(namespace).directory)
        await client.aclose()
        sync.close()


@pytest.mark.slow
def test_the_drill_kills_a_master_and_loses_nothing(tmp_path: Path) -> None:
    drill = Path(__file__).parent.parent / "scripts" / "cluster_drill.py"
    done = subprocess.run(
        [sys.executable, str(drill), "--json", "--cells", "6", "--workers", "2",
         "--nodes", "15", "--sessions", "24", "--utterances", "8", "--keep",
         str(tmp_path / "drill")],
        capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["finalized"] == result["delivered"] == 24 * 8
    assert result["lost"] == result["duplicate_jobs"] == result["max_overcommit"] == 0
    assert result["out_of_order"] == 0
    assert result["cells_verified"] == result["cells"] == 6
    assert result["masters_after"] == 3 and result["workers_alive"] == 2


def test_a_cluster_url_carries_its_user_to_the_client_and_to_principal_of() -> None:
    url = "redis+cluster://es~c0~node~n1:se%40cret@127.0.0.1:7000,127.0.0.1:7001"
    client = Store(url).client()  # connects on its first command: none is sent here
    principal = principal_of(client)
    assert principal is not None and (principal.cell, principal.role, principal.name) == (
        "c0", "node", "n1",
    )  # fmt: skip
    assert client.connection_kwargs["password"] == "se@cret"  # type: ignore[attr-defined]
    assert principal_of(Store("redis+cluster://127.0.0.1:7000").client()) is None
    with pytest.raises(ValueError, match="a cluster URL is"):
        Store("redis+cluster://127.0.0.1")
