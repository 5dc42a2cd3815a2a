"""What apply.lua gets for one entry: its kind and flat fields, or ``bad`` with a reason
and a bounded copy when it does not keep model.limits, does not validate, or is not its
source's to send (model.principals); and what the log gets for an entry admitted from
an ingress stream. Pure functions: no Redis. They are the model's because a trusted
producer sends its events with these arguments too (store.append: decided at append),
and must work them out exactly as the worker would from the log."""

from __future__ import annotations

from typing import Final

from pydantic import ValidationError

from eventsched.model.events import (
    ENTRY_FIELD,
    SOURCE_FIELD,
    Event,
    JobResult,
    NodeDeregistered,
    NodeDraining,
    NodeHeartbeat,
    NodeRegistered,
    NodeUndrained,
    PoolsConfigured,
    SessionClosed,
    SessionOpened,
    SettingsChanged,
    Tick,
    UtteranceFinalized,
    canonical_json,
    decode_event,
)
from eventsched.model.limits import (
    DLQ_COPY_BYTES,
    DLQ_COPY_FIELDS,
    MAX_JSON_DEPTH,
    RepeatedFields,
    entry_check,
    field_pairs,
    fields_check,
    id_in_range,
    json_depth,
    text,
)
from eventsched.model.principals import refusal
from eventsched.model.settings import DEFAULTS

__all__ = [
    "APPLY_DEFAULTS",
    "MAX_REASON",
    "Arg",
    "admitted_args",
    "admitted_fields",
    "as_fields",
    "bounded_copy",
    "entry_args",
    "event_args",
    "fields_args",
    "node_pairs",
    "script_entry",
    "stored_pairs",
]

Arg = str | int | bytes
MAX_REASON: Final = 200
_EVENT, _SOURCE = ENTRY_FIELD.encode(), SOURCE_FIELD.encode()
_REFUSED, _SIZE = b"refused", b"size"  # an entry refused at the door (admitted_fields)
# What apply.lua takes after its prefix, group and holder (ARGV[4], one argument: FCALL
# makes a Lua string of each, every call): the defaults of the settings it reads, then
# group_max_utterances's, for the decisions it folds, space-separated.
APPLY_DEFAULTS: Final = (
    " ".join(str(value) for value in (*DEFAULTS.as_argv(), DEFAULTS.group_max_utterances)),
)


def stored_pairs(pairs: list[str]) -> str:
    """A node record's ``pairs`` field: ``*,de,en,`` when the node serves every ordered
    pair of those languages (most nodes), else each pair, ``,de>en,``. The short form
    keeps the record within Redis's compact hash encoding (values up to
    ``hash-max-listpack-value``, 64 bytes by default; four languages listed pair by pair
    take 74, and the record then costs four times the memory)."""
    langs = sorted({lang for pair in pairs for lang in pair.split(">")})
    if len(langs) > 1 and len(set(pairs)) == len(langs) * (len(langs) - 1):
        return "*," + ",".join(langs) + ","
    return "," + ",".join(pairs) + ","


def node_pairs(stored: str) -> tuple[str, ...]:
    """The pairs a ``stored_pairs`` field names, sorted."""
    if stored.startswith("*"):
        langs = [lang for lang in stored[1:].split(",") if lang]
        return tuple(sorted(f"{src}>{tgt}" for src in langs for tgt in langs if src != tgt))
    return tuple(pair for pair in stored.split(",") if pair)


def script_entry(entry_id: bytes | str, kind: str, values: list[Arg]) -> list[Arg]:
    """One entry as apply.lua reads it: id, type, field count, fields."""
    return [entry_id, kind, len(values), *values]


def admitted_args(
    source: str, log_fields: list[bytes], entry_id: bytes | str, kind: str, values: list[Arg]
) -> list[Arg]:
    """One entry as apply.lua's ingress and append modes read it: its source ('' for a
    trusted producer's own), the fields the log gets, then as ``script_entry``."""
    return [source, len(log_fields), *log_fields, *script_entry(entry_id, kind, values)]


def event_args(event: Event) -> tuple[str, list[Arg]]:
    """The script's type code and flat fields for a valid event."""
    match event:
        case NodeRegistered():
            return "reg", [
                event.node_id,
                event.max_concurrency,
                ",".join(event.pool_languages()),
                stored_pairs(event.services.pairs()),
                event.gpu,
            ]
        case NodeHeartbeat():
            return "hb", [
                event.node_id,
                event.cpu_pct,
                "" if event.gpu_pct is None else event.gpu_pct,
                event.mem_pct,
                len(event.running_jobs),
            ]
        case NodeDraining():
            return "drain", [event.node_id]
        case NodeUndrained():
            return "undrain", [event.node_id]
        case NodeDeregistered():
            return "dereg", [event.node_id]
        case PoolsConfigured():
            fields: list[Arg] = [len(event.pools)]
            for pool in event.pools:
                fields += [pool.name, pool.order, ",".join(sorted(pool.languages))]
            return "pools", fields
        case SessionOpened():
            return "open", [event.session_id, event.src_lang, event.tgt_lang]
        case UtteranceFinalized():
            return "fin", [
                event.session_id,
                event.utterance_index,
                event.reason,
                event.audio_ref,
                event.duration_ms,
            ]
        case JobResult():
            return "res", [
                event.job_id,
                event.attempt,
                event.node_id,
                1 if event.ok else 0,
                event.error_code or "",
                event.asr_text,
                event.nmt_text,
                event.tts_audio_ref,
                event.tts_duration_ms,
                canonical_json(event.timings.model_dump(mode="json")),
            ]
        case SessionClosed():
            return "close", [event.session_id]
        case SettingsChanged():
            changes: list[Arg] = [len(event.settings)]
            for name, value in sorted(event.settings.items()):
                changes += [name, value]
            return "set", changes
        case Tick():
            return "tick", []
    raise TypeError(f"no script fields for {type(event).__name__}")  # pragma: no cover


def _invalid_reason(exc: ValidationError) -> str:
    """Where the first error is and pydantic's stable error type (``missing``,
    ``json_invalid``, ...), not its message, whose wording changes between releases:
    reasons end up in replay goldens."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "event"
    return f"invalid_event: {where}: {first['type']}"[:MAX_REASON]


def entry_args(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, list[Arg]]:
    """Type code and fields for one log entry; ``bad`` with a reason when it is invalid
    (model.limits: the checks made before any script sees an entry)."""
    if not fields or not id_in_range(entry_id):
        return "bad", [entry_check(entry_id, fields, _EVENT) or "", *bounded_copy(fields)]
    return fields_args(fields)


def fields_args(fields: dict[bytes, bytes]) -> tuple[str, list[Arg]]:
    """``entry_args`` for fields whose ID is fine (or not yet known: ingress). An entry
    stamped with its source (``by``, written by a worker only) may carry only events
    that principal may send (model.principals); one the worker refused at the door
    (``refused``) is dead-lettered with the worker's reason and its bounded copy."""
    if _SOURCE in fields and _REFUSED in fields:
        return "bad", _refused_args(fields)
    reason = fields_check(fields, _EVENT, _SOURCE)
    if reason is None:
        raw = fields[_EVENT]
        try:
            event = decode_event(raw)
        except ValidationError as exc:
            reason = _invalid_reason(exc)
            if reason.endswith("json_invalid") and json_depth(raw) > MAX_JSON_DEPTH:
                reason = f"too_deep: JSON nested beyond {MAX_JSON_DEPTH} levels"
        else:
            source = fields.get(_SOURCE)
            reason = None if source is None else refusal(text(source), event)
            if reason is None:
                return event_args(event)
    return "bad", [reason[:MAX_REASON], *bounded_copy(fields)]


def admitted_fields(source: str, fields: dict[bytes, bytes]) -> list[bytes]:
    """What the log gets for an entry taken from ``source``'s ingress: its event with the
    source stamped; or, when the entry breaks the bounds, the reason and a bounded copy
    (names prefixed ``f:``), so that a hostile entry is not copied into the log whole."""
    stamp = [_SOURCE, source.encode()]
    reason = fields_check(fields, _EVENT)
    if reason is None:
        return [*stamp, _EVENT, fields[_EVENT]]
    count, size, copy = _copy(fields, b"f:")
    return [*stamp, _REFUSED, reason.encode(), _SIZE, b"%d %d" % (count, size), *copy]


def as_fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """Flat name/value parts as a reader of the log gets them, repeated names kept."""
    pairs = list(zip(flat[::2], flat[1::2], strict=True))
    fields = dict(pairs)
    return fields if len(fields) == len(pairs) else RepeatedFields(pairs)


def _refused_args(fields: dict[bytes, bytes]) -> list[Arg]:
    count, _, size = fields.get(_SIZE, b"").partition(b" ")
    copy: list[Arg] = []
    for name, value in field_pairs(fields):
        if name.startswith(b"f:"):
            copy += [name[2:], value]
    numbers = [int(n) if n.isdigit() else 0 for n in (count, size)]
    return [text(fields[_REFUSED])[:MAX_REASON], *numbers, *copy]


def bounded_copy(fields: dict[bytes, bytes]) -> list[Arg]:
    """What a dead letter keeps of an entry: how many fields and bytes it had, then its
    first DLQ_COPY_FIELDS pairs, each name and value cut to DLQ_COPY_BYTES (apply.lua's
    dead_letter says so when that cut anything)."""
    count, size, kept = _copy(fields)
    return [count, size, *kept]


def _copy(fields: dict[bytes, bytes], prefix: bytes = b"") -> tuple[int, int, list[bytes]]:
    pairs = field_pairs(fields)
    kept: list[bytes] = []
    for name, value in pairs[:DLQ_COPY_FIELDS]:
        kept += [prefix + name[:DLQ_COPY_BYTES], value[:DLQ_COPY_BYTES]]
    return len(pairs), sum(len(k) + len(v) for k, v in pairs), kept
