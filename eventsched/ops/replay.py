"""Replay: a cell's input events from a fixture, played on a fresh store through exactly
the worker's code and scripts, give the same output text every time, on any backend.
Record: a live cell's log and its live output, written as a fixture and its golden.

The fixture format is in docs/REPLAY.md.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from eventsched.dispatch.retention import checkpoint_markers, deleted_below, load_checkpoint
from eventsched.dispatch.worker import DEFAULT_BATCH, Worker
from eventsched.model.events import ENTRY_FIELD, Event, NodeRegistered, canonical_json
from eventsched.model.keys import DEFAULT_CELL, SUFFIXES, CellKeys
from eventsched.model.limits import field_pairs
from eventsched.model.principals import lawful_event
from eventsched.model.settings import DecisionSettings
from eventsched.ops.verify import rebuild_in_memory, start_groups
from eventsched.projections.cell_settings import seed_settings
from eventsched.projections.cell_state import read_state, render_state, restore_items, restore_state
from eventsched.store.append import append_exact
from eventsched.store.client import MEMORY_URL, RedisClient, Store, unlink_matching
from eventsched.store.streams import id_after, next_id, text, xrange_raw

__all__ = [
    "FORMAT",
    "Fields",
    "Fixture",
    "FixtureError",
    "ReplayResult",
    "check",
    "load_fixture",
    "play",
    "record",
    "replay",
    "state_at",
]

FORMAT = "eventsched-replay/1"
GOLDEN_SUFFIX = ".golden"
_PAGE = 1000


# A log entry's fields: text, or (for an entry that repeats a name or holds bytes that
# are not UTF-8) the pairs exactly as Redis held them.
Fields = dict[str, str] | list[tuple[bytes, bytes]]


class FixtureError(ValueError):
    """A fixture that cannot be read; the message names the file and line."""


@dataclass
class Fixture:
    name: str
    cell: str = DEFAULT_CELL
    settings: DecisionSettings = field(default_factory=DecisionSettings)
    comments: list[str] = field(default_factory=list)
    entries: list[tuple[str, Fields]] = field(default_factory=list)  # (log ID, fields)
    snapshot: list[dict[str, Any]] = field(default_factory=list)  # state to start from
    with_state: bool = True  # False: the golden holds the output streams only

    def to_text(self) -> str:
        header: dict[str, Any] = {
            "format": FORMAT,
            "cell": self.cell,
            "settings": self.settings.model_dump(),
        }
        if not self.with_state:
            header["outputs"] = "streams"
        lines = [f"# {line}".rstrip() for line in self.comments]
        lines.append(canonical_json(header))
        lines += [canonical_json(item) for item in self.snapshot]
        for entry_id, fields in self.entries:
            lines.append(canonical_json({"id": entry_id, **_entry_body(fields)}))
        return "\n".join(lines) + "\n"


def _entry_body(fields: Fields) -> dict[str, Any]:
    """A log entry as a fixture line: the event as JSON when that is lossless, else the
    raw fields (invalid entries are kept exactly as they were: ``raw_pairs`` when a name
    repeats or bytes are not UTF-8, each such part as ``{"hex": ...}``)."""
    if isinstance(fields, list):
        return {"raw_pairs": [[_hex_unless_text(k), _hex_unless_text(v)] for k, v in fields]}
    raw = fields.get(ENTRY_FIELD)
    if raw is not None and len(fields) == 1:
        try:
            event = json.loads(raw)
        except (ValueError, RecursionError):  # kept raw, as it was
            event = None
        if isinstance(event, dict) and canonical_json(event) == raw:
            return {"event": event}
    return {"raw": fields}


def _hex_unless_text(part: bytes) -> str | dict[str, str]:
    try:
        return part.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": part.hex()}


def _part(number: int, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("hex"), str):
        try:
            return bytes.fromhex(value["hex"])
        except ValueError:
            pass
    raise FixtureError(f'line {number}: a raw_pairs part is text or {{"hex": ...}}')


def recorded_fields(raw: dict[bytes, bytes]) -> Fields:
    """An entry read from Redis as fixture fields: text when that is exact (one UTF-8
    field; a fixture line's keys are sorted, so several fields keep their order only as
    pairs)."""
    pairs = field_pairs(raw)
    if len(pairs) == 1:
        with contextlib.suppress(UnicodeDecodeError):
            return {pairs[0][0].decode("utf-8"): pairs[0][1].decode("utf-8")}
    return pairs


def _parse_line(number: int, line: str, previous_ms: int, seq: int) -> tuple[str, Fields]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FixtureError(f"line {number}: not JSON ({exc.msg})") from None
    except RecursionError:
        raise FixtureError(f"line {number}: JSON nested too deep") from None
    if not isinstance(item, dict):
        raise FixtureError(f"line {number}: expected an object")
    if "id" in item:
        entry_id = str(item["id"])
        ms_text, _, seq_text = entry_id.partition("-")
        if not (ms_text.isdigit() and seq_text.isdigit()):
            raise FixtureError(f"line {number}: id must be MS-SEQ")
    elif isinstance(item.get("t"), int) and item["t"] > 0:
        ms = item["t"]
        entry_id = f"{ms}-{seq if ms == previous_ms else 0}"
    else:
        raise FixtureError(f"line {number}: needs a positive integer time 't' (ms) or an 'id'")
    if "event" in item:
        return entry_id, {ENTRY_FIELD: canonical_json(item["event"])}
    if isinstance(item.get("raw"), dict) and item["raw"]:
        return entry_id, {str(k): str(v) for k, v in item["raw"].items()}
    pairs = item.get("raw_pairs")
    if (
        isinstance(pairs, list)
        and pairs
        and all(isinstance(p, list) and len(p) == 2 for p in pairs)
    ):
        return entry_id, [(_part(number, k), _part(number, v)) for k, v in pairs]
    raise FixtureError(
        f"line {number}: needs 'event' (an object), 'raw' (its fields) or 'raw_pairs'"
    )


def load_fixture(path: Path) -> Fixture:
    fixture = Fixture(name=path.stem)
    header_seen = False
    previous_ms, previous_id, seq = -1, (0, 0), 0
    # Lines end at "\n" only: JSON text may hold U+2028, U+2029 or U+0085 raw, which
    # str.splitlines would also break at.
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FixtureError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for number, line in enumerate(content.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if not header_seen:
                fixture.comments.append(stripped.lstrip("#").strip())
            continue
        if not header_seen:
            try:
                header = json.loads(stripped)
                if not isinstance(header, dict) or header.get("format") != FORMAT:
                    raise FixtureError(
                        f"{path}:line {number}: the first line must be the header, a JSON"
                        f' object with "format": "{FORMAT}" (and "cell", "settings")'
                    )
                fixture.cell = str(header.get("cell", DEFAULT_CELL))
                fixture.settings = DecisionSettings.model_validate(header.get("settings", {}))
                fixture.with_state = header.get("outputs", "all") != "streams"
            except (ValueError, AttributeError, ValidationError) as exc:
                if isinstance(exc, FixtureError):
                    raise
                raise FixtureError(f"{path}:line {number}: bad header: {exc}") from None
            header_seen = True
            continue
        if stripped.startswith('{"restore":'):
            if fixture.entries:
                raise FixtureError(f"{path}:line {number}: restore lines come before events")
            fixture.snapshot.append(json.loads(stripped))
            continue
        try:
            entry_id, fields = _parse_line(number, stripped, previous_ms, seq)
        except FixtureError as exc:
            raise FixtureError(f"{path}:{exc}") from None
        ms, entry_seq = (int(part) for part in entry_id.split("-"))
        if (ms, entry_seq) <= previous_id:
            raise FixtureError(f"{path}:line {number}: times must increase ({entry_id})")
        previous_ms, previous_id, seq = ms, (ms, entry_seq), entry_seq + 1
        fixture.entries.append((entry_id, fields))
    if not header_seen:
        raise FixtureError(f"{path}: no header line")
    return fixture


@dataclass(frozen=True)
class ReplayResult:
    name: str
    events: int
    output: str

    @property
    def output_lines(self) -> int:
        return sum(1 for line in self.output.split("\n")[:-1] if not line.startswith("## "))


async def play(
    client: RedisClient, keys: CellKeys, fixture: Fixture, batch: int = DEFAULT_BATCH
) -> None:
    """Put the fixture's snapshot and events into the cell ``keys`` (which must be empty)
    and apply them with the worker's own code: the cell is then as the fixture leaves it."""
    await seed_settings(client, keys, fixture.settings)
    await restore_state(client, keys, fixture.snapshot)
    for start in range(0, len(fixture.entries), _PAGE):
        async with client.pipeline(transaction=False) as pipe:
            for entry_id, fields in fixture.entries[start : start + _PAGE]:
                pairs = fields if isinstance(fields, list) else fields.items()
                append_exact(pipe, keys.log, entry_id, pairs)
            await pipe.execute()
    await start_groups(client, keys)
    worker = Worker(client, [keys], name="replay", batch_size=batch)
    await worker.drain()
    await worker.release()


async def replay(
    fixture: Fixture, url: str = MEMORY_URL, batch: int = DEFAULT_BATCH
) -> ReplayResult:
    """Play the fixture on a fresh namespace of the store and render what came out."""
    keys = CellKeys(fixture.cell, f"replay-{uuid.uuid4().hex[:12]}")
    client = Store(url).client()
    try:
        await play(client, keys, fixture, batch)
        output = render_state(await read_state(client, keys), fixture.with_state)
        return ReplayResult(fixture.name, len(fixture.entries), output)
    finally:
        await unlink_matching(client, f"{keys.namespace}:*")
        await client.aclose()


def golden_path(fixture_path: Path) -> Path:
    return fixture_path.with_suffix(GOLDEN_SUFFIX)


def check(result: ReplayResult, golden: str | None, context_lines: int = 2) -> str | None:
    """None when the output is the golden; else a short unified diff of the first
    difference."""
    if golden is None:
        return "no golden file (run with --update to write it)"
    if result.output == golden:
        return None
    diff = list(
        difflib.unified_diff(
            golden.split("\n"),
            result.output.split("\n"),
            "golden",
            "replayed",
            n=context_lines,
            lineterm="",
        )
    )
    first_hunk_end = next(
        (i for i, line in enumerate(diff) if i > 2 and line.startswith("@@")), len(diff)
    )
    return "\n".join(line[:200] for line in diff[: min(first_hunk_end, 24)])


async def state_at(client: RedisClient, keys: CellKeys, point: str) -> list[dict[str, Any]]:
    """The projections (no stream history) as they were once the log entry ``point``
    had been applied: the newest checkpoint at or before it (or nothing), with the log
    after it replayed in memory by the same scripts."""
    usable = [m for m in await checkpoint_markers(client, keys) if not id_after(m, point)]
    base = usable[-1] if usable else None
    items = await load_checkpoint(client, keys, base) if base else []
    deleted = await deleted_below(client, keys, keys.log)
    if deleted is not None and id_after(deleted, next_id(base or "0-0")):
        raise ValueError(
            f"the log before {point} was trimmed past the newest checkpoint before it "
            f"({base or 'none'}); start the recording later"
        )
    state, _ = await rebuild_in_memory(client, keys, point, "record", items, base)
    return restore_items(state)


async def record(
    client: RedisClient,
    keys: CellKeys,
    name: str,
    comments: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
) -> tuple[Fixture, str]:
    """A fixture of the live cell's log and its golden, the live output.

    Without ``until`` the recording ends at the point the cell has applied, and the
    golden holds the live output there, projections included. With ``until`` it ends
    there, and the golden holds the output streams as they were at that point (they are
    append-only; the projections of a past point are not kept live). With ``since`` it
    starts after that entry, from a snapshot of the projections at it (a stored
    checkpoint plus the log after it, replayed in memory), and the golden holds the
    stream entries caused after it. A log trimmed before the start is fine as long as a
    checkpoint covers it (``eventsched worker --retain`` writes them)."""
    live = await read_state(client, keys)
    applied = live["_applied"]
    end = applied
    if until is not None:
        if id_after(until, applied):
            raise ValueError(f"--until {until} is beyond what the cell applied ({applied})")
        end = until
    if since is not None and id_after(since, end):
        raise ValueError(f"--since {since} is after the end of the recording ({end})")
    if since is None and await deleted_below(client, keys, keys.log) is not None:
        raise ValueError("the log was trimmed: give --since at or after its first entry")
    fixture = Fixture(
        name=name,
        cell=keys.cell,
        comments=comments or [],
        with_state=end == applied,
    )
    if since is not None:
        fixture.snapshot = await state_at(client, keys, since)
    cursor = f"({since}" if since is not None else "-"
    while True:
        page = await xrange_raw(client, keys.log, cursor, _PAGE)
        for entry_id, raw in page:
            entry = text(entry_id)
            if id_after(entry, end):
                break
            fixture.entries.append((entry, recorded_fields(raw)))
        else:
            if len(page) == _PAGE:
                cursor = "(" + text(page[-1][0])
                continue
        break
    registered = {
        f"{SUFFIXES['inbox']}{event.node_id}"
        for event in map(_event_of, fixture.entries)
        if isinstance(event, NodeRegistered)
    }
    output = _cut_streams(live, since, end, registered)
    return fixture, render_state(output, fixture.with_state)


def _event_of(entry: tuple[str, Fields]) -> Event | None:
    """The event an entry holds, in whatever JSON form it was written; None if none."""
    fields = entry[1]
    return None if isinstance(fields, list) else lawful_event(fields)


def _cut_streams(
    state: dict[str, Any], after: str | None, end: str, new_inboxes: set[str]
) -> dict[str, Any]:
    """The state with its output streams cut to the entries caused by log entries in
    (after, end]. A node's inbox is kept when it has such entries or the node registered
    in that span (registering makes the inbox, empty)."""

    def inside(log_id: bytes) -> bool:
        entry = text(log_id)
        return not id_after(entry, end) and (after is None or id_after(entry, after))

    cut = {name: value for name, value in state.items() if not _is_output(name)}
    handed: set[tuple[bytes, bytes]] = set()  # (job, attempt) dispatched in the span
    if "decisions" in state:  # a worker makes it with its group, even when empty
        cut["decisions"] = []
    for entry_id, fields in state.get("decisions", []):
        if inside(fields[b"at"]):
            cut["decisions"].append((entry_id, fields))
            if fields[b"k"] == b"d":
                handed.add((fields[b"job"], fields[b"att"]))
    for name, value in state.items():
        if name.startswith("out:"):
            kept = [(i, f) for i, f in value if inside(f[b"at"])]
            if kept:
                cut[name] = kept
        elif name.startswith("inbox:"):
            kept = [(i, f) for i, f in value if (f[b"job"], f[b"att"]) in handed]
            if kept or name in new_inboxes:
                cut[name] = kept
        elif name == "dlq":
            kept = [(i, f) for i, f in value if inside(f[b"log_id"])]
            if kept:
                cut[name] = kept
    return cut


def _is_output(name: str) -> bool:
    return name in ("decisions", "dlq") or name.startswith(("out:", "inbox:"))
