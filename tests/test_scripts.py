"""The scripts and keys.py agree, and scripts survive being flushed from Redis."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from eventsched.dispatch.applier import Applier
from eventsched.model.keys import SCRIPT_KEYS, SUFFIXES, CellKeys
from eventsched.store.client import Store, is_memory_url
from eventsched.store.scripts import declared_keys, lua_source
from tests.harness import Cell, finalize, node, session
from tests.servers import private_redis


@pytest.mark.parametrize("name", sorted(SCRIPT_KEYS))
def test_each_script_declares_the_keys_keys_py_passes(name: str) -> None:
    assert declared_keys(name) == list(SCRIPT_KEYS[name])
    used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", lua_source(name))}
    assert used == set(range(1, len(SCRIPT_KEYS[name]) + 1))


def test_the_cell_passes_as_many_keys_as_each_script_declares() -> None:
    keys = CellKeys()
    for name in ("apply", "groups"):
        assert len(keys.script_keys(name)) == len(declared_keys(name))


def test_the_key_suffixes_built_in_lua_match_keys_py() -> None:
    source = lua_source("apply") + lua_source("groups")
    lua_suffixes = set(re.findall(r"S_\w+(?:, S_\w+)* = ('[a-z_]+:'(?:, '[a-z_]+:')*)", source))
    found = {s.strip("' ") for group in lua_suffixes for s in group.split(",")}
    assert found == set(SUFFIXES.values())


def test_every_cell_key_carries_the_cell_hash_tag() -> None:
    keys = CellKeys("c7", "ns")
    names = [*keys.apply_keys(), keys.node("n"), keys.output("s"), keys.held("s", 3)]
    assert all(name.startswith("ns:{c7}:") for name in names)


@pytest.fixture
async def flushable_cell(store_url: str, tmp_path: Path) -> AsyncIterator[Cell]:
    """SCRIPT FLUSH empties the script cache of every client of a server, so the real
    variant runs on a private redis-server, never on the shared one."""
    with ExitStack() as stack:
        if not is_memory_url(store_url):
            store_url = stack.enter_context(private_redis(tmp_path))
        client = Store(store_url).client()
        yield Cell(client, CellKeys("c0", "flush"))
        await client.aclose()


@pytest.mark.anyio
async def test_dispatch_works_after_script_flush(flushable_cell: Cell) -> None:
    cell = flushable_cell
    await cell.step(node("n1"), session("s1"))
    await cell.client.script_flush()
    assert await cell.client.script_exists(Applier(cell.client, cell.keys).sha) == [False]
    await cell.step(finalize("s1", 0))
    assert [d["node"] for d in await cell.decisions("d")] == ["n1"]


def test_the_inbox_group_named_in_lua_matches_keys_py() -> None:
    from eventsched.model.keys import INBOX_GROUP

    assert f"local INBOX_GROUP = '{INBOX_GROUP}'" in lua_source("apply")
