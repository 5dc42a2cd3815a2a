"""Entries no producer should write: each is dead-lettered with its reason and a bounded
copy, and the entries after it are applied as if it had not been there."""

from __future__ import annotations

import re
import zlib
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.commands.core import AsyncScript

from eventsched.dispatch import applier
from eventsched.dispatch.worker import Worker
from eventsched.model.events import ENTRY_FIELD, encode_event
from eventsched.model.limits import (
    DLQ_COPY_BYTES,
    DLQ_COPY_FIELDS,
    DLQ_MAX_LEN,
    MAX_EVENT_BYTES,
    MAX_ID_SEQ,
    OUTPUT_MAX_LEN,
)
from eventsched.store.client import RedisClient
from eventsched.store.scripts import Library, callable_code, lua_source
from eventsched.store.streams import text, xrange_raw
from tests.harness import Cell, finalize, node, session, wait_for

pytestmark = pytest.mark.anyio


async def _ready(cell: Cell) -> None:
    await cell.step(node("n1"), session("s1"))
    cell.advance(10)


async def _raw_xadd(cell: Cell, entry_id: str, *flat: bytes | str) -> str:
    reply = await cell.client.execute_command(  # type: ignore[no-untyped-call]
        "XADD", cell.keys.log, entry_id, *flat
    )
    return text(reply)


async def _dlq_raw(cell: Cell) -> list[list[bytes]]:
    """Dead letters as Redis holds them: redis-py's XRANGE reply keeps one of each name."""
    script = "return redis.call('XRANGE', KEYS[1], '-', '+')"
    reply: list[Any] = await cell.client.eval(script, 1, cell.keys.dlq)
    return [list(fields) for _, fields in reply]


async def _dispatches_after(cell: Cell, index: int) -> None:
    await cell.step(finalize("s1", index))
    dispatched = [d for d in await cell.decisions("d") if d["idx"] == str(index)]
    assert len(dispatched) == 1, "the valid entry after the bad one was not applied"


def test_the_scripts_keep_the_limits_limits_py_names() -> None:
    apply_lua = lua_source("apply")
    found = re.search(
        r"local DLQ_COPY_FIELDS, DLQ_COPY_BYTES, DLQ_MAX_LEN = (\d+), (\d+), (\d+)", apply_lua
    )
    assert found and tuple(map(int, found.groups())) == (
        DLQ_COPY_FIELDS,
        DLQ_COPY_BYTES,
        DLQ_MAX_LEN,
    )
    claimed = re.search(r"local DLQ_MAX_LEN = (\d+)", lua_source("claim"))
    assert claimed and int(claimed.group(1)) == DLQ_MAX_LEN
    kept = re.search(r"local OUTPUT_MAX_LEN = '(\d+)'", lua_source("groups"))
    assert kept and int(kept.group(1)) == OUTPUT_MAX_LEN


async def test_thousands_of_fields_are_dead_lettered_with_a_bounded_copy(cell: Cell) -> None:
    await _ready(cell)
    flat = [part for i in range(4000) for part in (f"f{i}", "v")]
    await _raw_xadd(cell, f"{cell.now_ms}-*", *flat)
    await _dispatches_after(cell, 0)
    [letter] = await cell.dlq()
    assert letter["reason"].startswith("malformed_entry")
    assert letter["cut"] == f"4000 fields, {sum(len(p) for p in flat)} bytes"
    assert sorted(k for k in letter if k.startswith("f:")) == ["f:f0", "f:f1", "f:f2", "f:f3"]


async def test_a_huge_entry_keeps_only_its_first_bytes(cell: Cell) -> None:
    await _ready(cell)
    huge = b'{"type":"tick","pad":"' + b"x" * (MAX_EVENT_BYTES * 4) + b'"}'
    await _raw_xadd(cell, f"{cell.now_ms}-*", ENTRY_FIELD, huge)
    await _dispatches_after(cell, 0)
    [letter] = await cell.dlq()
    assert letter["reason"] == f"entry_too_large: {len(huge)} bytes, at most {MAX_EVENT_BYTES}"
    assert letter["f:e"] == text(huge[:DLQ_COPY_BYTES])
    assert letter["cut"] == f"1 fields, {len(huge) + 1} bytes"


@pytest.mark.parametrize("seq", [MAX_ID_SEQ + 1, 18446744073709551615])
async def test_an_id_beyond_the_valid_range_is_dead_lettered(cell: Cell, seq: int) -> None:
    await _ready(cell)
    fin = encode_event(finalize("s1", 0))
    await _raw_xadd(cell, f"{cell.now_ms}-{seq}", ENTRY_FIELD, fin)
    cell.advance(1)
    await _dispatches_after(cell, 1)
    [letter] = await cell.dlq()
    assert letter["reason"].startswith("id_out_of_range")
    assert letter["f:e"] == fin  # small entries are copied whole, without a cut note
    assert "cut" not in letter


async def test_a_repeated_field_is_dead_lettered_not_half_applied(cell: Cell) -> None:
    await _ready(cell)
    first, second = encode_event(finalize("s1", 0)), encode_event(finalize("s1", 1))
    await _raw_xadd(cell, f"{cell.now_ms}-*", ENTRY_FIELD, first, ENTRY_FIELD, second)
    await cell.apply()
    assert await cell.decisions("d") == []
    [raw] = await _dlq_raw(cell)
    assert raw[raw.index(b"reason") + 1] == b"repeated_field: 'e'"
    copies = [raw[i + 1] for i in range(0, len(raw), 2) if raw[i] == b"f:e"]
    assert copies == [first.encode(), second.encode()]
    await _dispatches_after(cell, 2)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"type":"session_closed","session_id":"\xff"}', "not_utf8: at byte 39"),
        (b"[" * 100_000, "too_deep: JSON nested beyond 32 levels"),
    ],
)
async def test_undecodable_values_get_their_own_reason(
    cell: Cell, value: bytes, reason: str
) -> None:
    await _ready(cell)
    await _raw_xadd(cell, f"{cell.now_ms}-*", ENTRY_FIELD, value)
    await _dispatches_after(cell, 0)
    [letter] = await cell.dlq()
    assert letter["reason"] == reason


async def test_the_dead_letter_stream_is_capped_and_counts_what_it_dropped(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap, lowered to 3 in the script's text, keeps the newest dead letters."""

    small_cap = _edited_apply(f"DLQ_MAX_LEN = 4, 4096, {DLQ_MAX_LEN}", "DLQ_MAX_LEN = 4, 4096, 3")
    monkeypatch.setattr(applier, "callable_code", small_cap)
    await _ready(cell)
    for index in range(5):
        await cell.append_fields({"bad": str(index)})
    await cell.apply()
    assert [letter["f:bad"] for letter in await cell.dlq()] == ["2", "3", "4"]
    assert (await cell.hash(cell.keys.meta))["dlq_trimmed"] == "2"


def _edited_apply(old: str, new: str) -> Any:
    """What applier.callable_code gives, with apply.lua's text edited: a library of its
    own name (its text is not the one the name hashes), so the real one is left alone."""

    def code(client: RedisClient, name: str) -> AsyncScript | Library:
        if name != "apply":
            return callable_code(client, name)
        library = Library(client, name)
        assert old in library.code
        edited = f"{library.function}_edited_{zlib.crc32((old + new).encode())}"
        library.code = library.code.replace(old, new).replace(library.function, edited)
        library.function = edited
        return library

    return code


def _script_failing_on(session_id: str) -> Any:
    """apply.lua with a fault no check foresees: opening ``session_id`` raises after
    the session hash is half written."""
    hook = "function handlers.open(f)\n"
    return _edited_apply(hook, f"{hook}  if f[1] == '{session_id}' then error('injected') end\n")


async def test_an_entry_the_script_fails_on_is_dead_lettered_and_the_rest_apply(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(applier, "callable_code", _script_failing_on("poison"))
    await cell.append(node("n1", max_concurrency=8), session("s1"), finalize("s1", 0))
    await cell.append(session("poison"), finalize("s1", 1), session("s2"), finalize("s2", 0))
    await cell.apply()
    # Each job once: the entries before the failing one were not applied again.
    assert [d["job"] for d in await cell.decisions("d")] == ["s1:0", "s1:1", "s2:0"]
    [letter] = await cell.dlq()
    assert letter["reason"].startswith("apply_error: ") and "injected" in letter["reason"]
    assert letter["f:e"] == encode_event(session("poison"))
    last_id, _ = (await xrange_raw(cell.client, cell.keys.log))[-1]
    assert (await cell.hash(cell.keys.meta))["applied"] == text(last_id)


async def test_a_running_worker_keeps_dispatching_past_a_failing_entry(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(applier, "callable_code", _script_failing_on("poison"))
    worker = Worker(cell.client, [cell.keys], name="w1", block_ms=20, tick_ms=50)
    stop = anyio.Event()

    async def dispatched() -> bool:
        return len(await cell.decisions("d")) == 2

    async with anyio.create_task_group() as group:
        group.start_soon(worker.run, stop)
        await cell.append_live(node("n1", max_concurrency=8), session("s1"), finalize("s1", 0))
        await cell.append_live(session("poison"), finalize("s1", 1))
        await wait_for(dispatched)
        stop.set()
    assert [letter["reason"][:12] for letter in await cell.dlq()] == ["apply_error:"]


_PART = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"e", ENTRY_FIELD.encode(), b"", b"\xff", b"[" * 50, b'{"type":"tick"}']),
    st.builds(lambda body: body.encode(), st.text(max_size=64)),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(pairs=st.lists(st.tuples(_PART, _PART), min_size=1, max_size=6))
async def test_any_fields_leave_the_worker_applying_what_follows(
    cell: Cell, pairs: list[tuple[bytes, bytes]]
) -> None:
    """One worker for every example: whatever fields an entry has, the valid finalize
    appended after it is applied (decided, or dead-lettered for a reason of its own)."""
    if not await cell.client.exists(cell.keys.session("s1")):
        await _ready(cell)
    cell.advance(1)
    await _raw_xadd(cell, f"{cell.now_ms}-*", *[part for pair in pairs for part in pair])
    top = int((await cell.hash(cell.keys.session("s1")))["top"])
    valid_id = (await cell.append(finalize("s1", top + 1)))[0]
    await cell.apply()
    assert (await cell.hash(cell.keys.meta))["applied"] == valid_id
    about = [d for d in await cell.decisions() if d.get("at") == valid_id]
    dead = [letter for letter in await cell.dlq() if letter["log_id"] == valid_id]
    assert about or dead
