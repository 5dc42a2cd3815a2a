"""The projection state of a cell, read at one consistent point of its log, and its
one canonical text form.

The keys are listed and read in one script call (lua/state.lua), so nothing can change
under the read; one taken while the groups projection has not caught up with the
decisions stream is taken again, a few times at most. The canonical text is what
replay goldens hold: nothing in it depends on the backend, the wall clock, the batch
size or the key namespace.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from eventsched.model.keys import SUFFIXES, CellKeys
from eventsched.store.client import RedisClient
from eventsched.store.scripts import register
from eventsched.store.streams import entries_of, text

__all__ = ["dump_state", "read_state", "render_state", "restore_items", "restore_state"]

_ATTEMPTS = 20
# Streams whose entry IDs are fixed by the log; the others (node inboxes, dead letters)
# get IDs from the server's clock, so only their fields are kept.
_ID_STREAMS = ("decisions", "out:")


def _short(name: str, keys: CellKeys) -> str:
    return name[len(keys.prefix) :]


# Not projection state: the log itself, stored checkpoints and trim points, the
# statistics snapshot (wall-clock figures), which dead letters an operator requeued,
# the principals ``eventsched acl`` registered; nor are the leases (who holds which
# role right now) or the ingress streams (input not yet in the log).
_IGNORED = ("log", "checkpoints", "trims", "stats", "requeued", "principals")


async def dump_state(
    client: RedisClient, keys: CellKeys, with_streams: bool = True
) -> dict[str, Any] | None:
    """Every projection key of the cell, read in one atomic script call (state.lua);
    None while its groups projection lags behind the decisions stream. Without
    ``with_streams`` the streams (decisions, outputs, inboxes, dead letters: history,
    not state) are left out, so the read costs the same however long they grow."""
    skipped = [keys.prefix + short for short in _IGNORED]
    reply = await register(client, "state")(
        keys=keys.script_keys("state"),
        args=[keys.all_pattern, int(with_streams), keys.lease(""), *skipped],
    )
    applied, groups_applied, newest_decision = (text(part) for part in reply[:3])
    if newest_decision and newest_decision != groups_applied:
        return None
    state: dict[str, Any] = {}
    for raw_name, raw_kind, value in reply[3:]:
        short, kind = _short(text(raw_name), keys), text(raw_kind)
        if short.startswith(SUFFIXES["ingress"]):
            continue
        if kind == "stream":
            # Inbox and dead-letter IDs come from the server's clock: compare fields.
            keep_ids = short.startswith(_ID_STREAMS)
            state[short] = [(text(i) if keep_ids else None, f) for i, f in entries_of(value)]
        elif kind == "set":
            state[short] = sorted(value)
        elif kind == "zset":
            state[short] = [
                (m, float(score)) for m, score in zip(value[::2], value[1::2], strict=True)
            ]
        elif kind == "hash":
            fields = dict(zip(value[::2], value[1::2], strict=True))
            state[short] = fields
        else:
            state[short] = value
    state["_applied"] = applied or "0-0"
    return state


async def read_state(client: RedisClient, keys: CellKeys) -> dict[str, Any]:
    """The cell's projection state at one consistent point (see dump_state)."""
    for _ in range(_ATTEMPTS):
        state = await dump_state(client, keys)
        if state is not None:
            return state
        await anyio.sleep(0.05)
    raise RuntimeError("the groups projection kept lagging while the cell was read; try again")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def restore_items(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The projection keys of a state (no stream history: decisions, outputs, inboxes and
    dead letters are outputs, not state) as JSON-able items that ``restore_state``
    writes back; checkpoints and replay snapshots are made of these."""
    items = []
    for name in sorted(k for k in state if not k.startswith("_")):
        value = state[name]
        if isinstance(value, dict):
            if value:  # a hash Redis keeps is never empty
                items.append({"restore": name, "type": "hash", "value": _plain(value)})
        elif isinstance(value, list) and _is_stream(value):
            continue
        elif isinstance(value, list) and value and isinstance(value[0], tuple):
            items.append({"restore": name, "type": "zset", "value": _plain(value)})
        elif isinstance(value, list):
            items.append({"restore": name, "type": "set", "value": _plain(value)})
        else:
            items.append({"restore": name, "type": "string", "value": _plain(value)})
    return items


async def restore_state(client: RedisClient, keys: CellKeys, items: list[dict[str, Any]]) -> None:
    """Write restore items under the cell's prefix."""
    async with client.pipeline(transaction=False) as pipe:
        for item in items:
            key, kind, value = keys.prefix + item["restore"], item["type"], item["value"]
            if kind == "hash":
                pipe.hset(key, mapping=value)
            elif kind == "zset":
                pipe.zadd(key, {member: score for member, score in value})
            elif kind == "set":
                pipe.sadd(key, *value)
            else:
                pipe.set(key, value)
        await pipe.execute()


def render_state(state: dict[str, Any], with_state: bool = True) -> str:
    """The canonical text of a state: the decisions, each session's outputs, each
    node's inbox and the dead letters as one line per entry, then (``with_state``)
    every other key. Fields are sorted; stream entries keep their order."""
    lines = []
    streams = sorted(k for k, v in state.items() if isinstance(v, list) and _is_stream(v))
    for name in streams:
        lines.append(f"## {name}")
        for entry_id, fields in state[name]:
            body = json.dumps(_plain(fields), ensure_ascii=False, separators=(",", ":"))
            lines.append(f"{text(entry_id)} {body}" if entry_id is not None else body)
    if not with_state:
        return "\n".join(lines) + "\n"
    lines.append("## state")
    for name in sorted(state):
        if name in streams or name.startswith("_"):
            continue
        body = json.dumps(_plain(state[name]), ensure_ascii=False, separators=(",", ":"))
        lines.append(f"{name} {body}")
    return "\n".join(lines) + "\n"


def _is_stream(value: list[Any]) -> bool:
    return all(
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict) for item in value
    )
