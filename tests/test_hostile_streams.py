"""The operator's tools on a cell whose log holds everything a hostile producer can
write: every command exits 0, the worker dead-lettered each bad entry, verify still
verifies (also after a requeue), and a recording replays to its golden."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from eventsched.cli.app import app
from typer.testing import CliRunner

from eventsched.dispatch.worker import Worker
from eventsched.model.events import ENTRY_FIELD, encode_event
from eventsched.model.keys import CellKeys
from eventsched.model.limits import MAX_EVENT_BYTES
from eventsched.ops.audit import measure
from eventsched.store.client import RedisClient, Store, is_memory_url
from tests.conftest import new_namespace, remove_namespace
from tests.harness import finalize, node, session

HOSTILE: list[list[bytes | str]] = [
    [f"f{i}".encode() if i % 2 == 0 else b"v" for i in range(8000)],  # 4,000 fields
    [ENTRY_FIELD, b'{"type":"session_closed","session_id":"\xff"}'],  # not UTF-8
    [b"\xfe\xff", b"v"],  # a field name that is not UTF-8
    [ENTRY_FIELD, b"[" * 100_000],  # nested beyond any parser
    [ENTRY_FIELD, encode_event(session("s9")), ENTRY_FIELD, encode_event(finalize("s9", 0))],
    [ENTRY_FIELD, b"x" * (MAX_EVENT_BYTES + 1)],
    [ENTRY_FIELD, encode_event(finalize("ghost", 0))],  # unknown session: requeued below
    # valid, but not in the canonical form: a recording must still know n2 registered
    [ENTRY_FIELD, json.dumps(node("n2").model_dump(mode="json"), indent=1)],
]


@pytest.fixture
async def hostile_cell(store_url: str, anyio_backend: str) -> AsyncIterator[tuple[str, str]]:
    url = f"memory://hostile-{uuid.uuid4().hex[:8]}" if is_memory_url(store_url) else store_url
    namespace = new_namespace()
    client = Store(url).client()
    keys = CellKeys("c0", namespace)
    # An ID whose seq is the largest Redis allows, at the start (nothing can follow it
    # in the same millisecond).
    await client.execute_command(  # type: ignore[no-untyped-call]
        "XADD", keys.log, "1-18446744073709551615", ENTRY_FIELD, encode_event(finalize("s1", 1))
    )
    await _append(client, keys, [ENTRY_FIELD, encode_event(node("n1"))])
    await _append(client, keys, [ENTRY_FIELD, encode_event(session("s1"))])
    for flat in HOSTILE:
        await _append(client, keys, flat)
    line_separators = finalize("s1", 0).model_copy(update={"audio_ref": "a\u2028b\u2029c\x85d"})
    await _append(client, keys, [ENTRY_FIELD, encode_event(line_separators)])
    await Worker(client, [keys], name="w1").drain()
    yield url, namespace
    await remove_namespace(client, namespace)
    await client.aclose()


async def _append(client: RedisClient, keys: CellKeys, flat: list[bytes | str]) -> None:
    await client.execute_command("XADD", keys.log, "*", *flat)  # type: ignore[no-untyped-call]


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output[:3000])
    return result.stdout


def test_every_tool_reads_a_hostile_log(hostile_cell: tuple[str, str], tmp_path: Path) -> None:
    url, namespace = hostile_cell
    where = ("--redis-url", url, "--namespace", namespace)
    letters: list[dict[str, Any]] = json.loads(_run("dlq", "list", *where, "--json"))
    reasons = sorted(letter["reason"].split(":")[0] for letter in letters)
    assert reasons == [
        "entry_too_large",
        "id_out_of_range",
        "malformed_entry",
        "malformed_entry",
        "not_utf8",
        "repeated_field",
        "too_deep",
        "unknown_session",
    ]
    for letter in letters:
        assert json.loads(_run("dlq", "show", letter["dlq_id"], *where))["reason"]
    assert _run("verify", *where).splitlines()[0].endswith(", ok")
    ghost = next(letter for letter in letters if letter["reason"] == "unknown_session")
    _run("dlq", "requeue", ghost["dlq_id"], *where)
    assert _run("verify", *where).splitlines()[0].endswith(", ok")
    assert len(json.loads(_run("dlq", "list", *where, "--json"))) == len(letters) - 1
    tail = _run("tail", *where, "--count", "100").splitlines()
    assert len(tail) >= len(HOSTILE) + 3
    for command in (["nodes"], ["sessions"], ["jobs"], ["streams"], ["pools"]):
        json.loads(_run(*command, *where, "--json"))
    recording = tmp_path / "hostile.jsonl"
    _run("record", *where, "--out", str(recording))
    assert "\u2028" in recording.read_text(encoding="utf-8")
    _run("replay", str(recording), "--check")


@pytest.mark.anyio
async def test_the_audit_reads_a_hostile_log(
    hostile_cell: tuple[str, str], anyio_backend: str
) -> None:
    url, namespace = hostile_cell
    client = Store(url).client()
    report = await measure(client, CellKeys("c0", namespace), ["s1"], ["n1"])
    await client.aclose()
    # s1:0 is dispatched and in flight; s1:1 was dead-lettered for its ID.
    assert (report.finalized, report.dispatched, report.delivered) == (2, 1, 0)
    assert report.dead_lettered == 1
