"""The limits a log entry must keep before any script sees it, and how much of a bad
one the dead-letter stream keeps.

A valid entry is one field ``e`` holding an event's JSON. Anything else is dead-lettered
with a reason (``entry_check``), so a hostile or broken producer costs a dead letter,
never a worker. docs/PROTOCOL.md lists these limits; apply.lua keeps the same copy
limits for the dead letters it finds itself (tested).
"""

from __future__ import annotations

from collections import Counter
from typing import Final

__all__ = [
    "DLQ_COPY_BYTES",
    "DLQ_COPY_FIELDS",
    "DLQ_MAX_LEN",
    "MAX_EVENT_BYTES",
    "MAX_ID_MS",
    "MAX_ID_SEQ",
    "MAX_JSON_DEPTH",
    "OUTPUT_MAX_LEN",
    "RepeatedFields",
    "entry_check",
    "field_pairs",
    "fields_check",
    "id_in_range",
    "json_depth",
    "text",
]

# The largest valid event is a pools configuration (256 pools) or a heartbeat listing
# 1,024 running jobs: under 128 KiB. Twice that is the limit.
MAX_EVENT_BYTES: Final = 256 * 1024
# Valid events nest four deep (pools -> pool -> languages); the JSON parser gives up
# far deeper, and the reason then says so.
MAX_JSON_DEPTH: Final = 32
# Event time is the ID's millisecond part (2^48 ms is the year 10889), and a decision's
# ID is ms-(seq * 2^20 + j): both stay below 2^53, exact in Lua's doubles.
MAX_ID_MS: Final = 2**48 - 1
MAX_ID_SEQ: Final = 2**32 - 1
# A dead letter keeps the first fields of the entry, each cut to this many bytes, and
# says how large the entry was when anything was cut.
DLQ_COPY_FIELDS: Final = 4
DLQ_COPY_BYTES: Final = 4096
# The dead-letter stream holds at most this many; the oldest go first, counted in the
# cell's meta hash (``dlq_trimmed``).
DLQ_MAX_LEN: Final = 10_000
# A session's output stream keeps its newest entries, this many (groups.lua): a reader
# that far behind has lost its listener long ago, and an hour-long session stays bounded.
OUTPUT_MAX_LEN: Final = 1000


class RepeatedFields(dict[bytes, bytes]):
    """An entry's fields when a name came more than once: the dict keeps the last
    value of each, ``pairs`` every pair as Redis holds them."""

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def field_pairs(fields: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """An entry's field pairs as Redis holds them, repeats included."""
    return fields.pairs if isinstance(fields, RepeatedFields) else list(fields.items())


def id_in_range(entry_id: bytes) -> bool:
    ms, _, seq = entry_id.partition(b"-")
    return ms.isdigit() and seq.isdigit() and int(ms) <= MAX_ID_MS and int(seq) <= MAX_ID_SEQ


def json_depth(raw: bytes) -> int:
    """How deep brackets nest in ``raw``, outside strings: for a reason, not a parse."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def entry_check(
    entry_id: bytes, fields: dict[bytes, bytes], name: bytes, stamp: bytes | None = None
) -> str | None:
    """Why the log entry cannot be decoded (None when it may be): the reason a dead
    letter gets. ``name`` is the one field a valid entry has, ``stamp`` one more it may
    have (the principal the worker admitted it from)."""
    if not fields:
        # Redis hands back a pending entry without fields once it has been trimmed.
        return "entry_deleted: trimmed before it was applied"
    if not id_in_range(entry_id):
        return f"id_out_of_range: ms above {MAX_ID_MS} or seq above {MAX_ID_SEQ}"
    return fields_check(fields, name, stamp)


def text(value: bytes | str) -> str:
    """Bytes from Redis as text; bytes that are not UTF-8 are shown escaped (``\\xff``),
    so nothing a producer wrote can stop a reader."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def fields_check(fields: dict[bytes, bytes], name: bytes, stamp: bytes | None = None) -> str | None:
    """``entry_check`` without the ID: for an ingress entry, whose ID never reaches the
    log."""
    if isinstance(fields, RepeatedFields):
        counts = Counter(k for k, _ in fields.pairs)
        repeated = min(k for k, n in counts.items() if n > 1)
        return f"repeated_field: {text(repeated)!r}"
    raw = fields.get(name)
    expected = 2 if stamp is not None and stamp in fields else 1
    if raw is None or len(fields) != expected:
        return f"malformed_entry: expected the single field {name.decode()!r}"
    if len(raw) > MAX_EVENT_BYTES:
        return f"entry_too_large: {len(raw)} bytes, at most {MAX_EVENT_BYTES}"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not_utf8: at byte {exc.start}"
    return None
