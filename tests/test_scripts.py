"""The scripts and keys.py agree, and scripts survive being flushed from Redis."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from eventsched.model.keys import SCRIPT_KEYS, SUFFIXES, CellKeys
from eventsched.store.client import Store, is_memory_url
from eventsched.store.scripts import Library, declared_keys, is_library, lua_source
from eventsched.store.streams import text
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
    source = lua_source("apply") + lua_source("groups") + lua_source("records")
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
async def test_dispatch_works_after_scripts_and_functions_are_flushed(
    flushable_cell: Cell,
) -> None:
    cell = flushable_cell
    await cell.step(node("n1"), session("s1"))
    await cell.client.script_flush()
    await cell.client.function_flush()
    assert await cell.client.function_list() == []
    await cell.step(finalize("s1", 0))  # the apply library and the groups script again
    assert [d["node"] for d in await cell.decisions("d")] == ["n1"]
    assert await cell.client.zrange(cell.keys.in_flight("s1"), 0, -1) == [b"0"]
    library = Library(cell.client, "apply")
    listed = await cell.client.function_list()
    assert [dict(zip(f[::2], f[1::2], strict=True))[b"library_name"] for f in listed] == [
        library.function.encode()
    ]


def test_a_library_is_named_after_its_text_and_registers_its_function() -> None:
    library = Library(None, "apply")  # type: ignore[arg-type]  # nothing is called
    assert library.code.startswith(f"#!lua name={library.function}\n")
    assert library.code.endswith(f"redis.register_function('{library.function}', apply)\n")
    assert "-- @register" not in library.code
    assert is_library("apply") and not is_library("groups")


def test_the_inbox_group_named_in_lua_matches_keys_py() -> None:
    from eventsched.model.keys import INBOX_GROUP

    assert f"local INBOX_GROUP = '{INBOX_GROUP}'" in lua_source("apply")


def test_the_groups_group_named_in_lua_matches_keys_py() -> None:
    from eventsched.model.keys import GROUPS_GROUP

    assert f"local GROUPS_GROUP = '{GROUPS_GROUP}'" in lua_source("apply")


@pytest.mark.anyio
async def test_stream_ids_compare_and_split_as_integers_in_lua(cell: Cell) -> None:
    # common.lua compares IDs without parsing them: by the length of their ms, then as text.
    ids = [
        "0-0",
        "0-1",
        "1-0",
        "9-0",
        "9-10",
        "9-9",
        "10-0",
        "99-100",
        "100-0",
        "1700000000000-0",
        "1700000000000-11",
        "1700000000000-2",
        "1700000000001-0",
    ]
    probe = (
        lua_source("common")
        + """
local out = {}
for i = 1, #ARGV, 2 do
  local ms, seq, ms_text = id_parts(ARGV[i])
  out[#out + 1] = (id_after(ARGV[i], ARGV[i + 1]) and '1' or '0') .. ' ' .. ms_text .. ' '
    .. int_text(ms) .. ' ' .. int_text(seq)
end
return out
"""
    )
    pairs = [(a, b) for a in ids for b in ids]
    found = await cell.client.eval(probe, 0, *[part for pair in pairs for part in pair])

    def parts(entry_id: str) -> tuple[int, int]:
        ms, seq = entry_id.split("-")
        return int(ms), int(seq)

    expected = [
        f"{int(parts(a) > parts(b))} {a.split('-')[0]} {parts(a)[0]} {parts(a)[1]}"
        for a, b in pairs
    ]
    assert [text(line) for line in found] == expected
