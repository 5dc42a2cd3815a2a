"""The dead-letter stream of a cell: what could not be applied, with its reason, the ID
it had in the log and copies of its original fields (``f:<name>``, bounded: ``cut`` says
how large the entry was when the copy is short of it).

Dead letters are made by applying the log, so a requeued one stays in the stream, as a
rebuild would make it again; the ``requeued`` hash notes where it went, and listing
leaves it out."""

from __future__ import annotations

import re
from dataclasses import dataclass

from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient
from eventsched.store.scripts import register
from eventsched.store.streams import read_stream, text

__all__ = ["DeadLetter", "find", "list_dead", "requeue"]

FIELD_PREFIX = "f:"
_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


@dataclass(frozen=True)
class DeadLetter:
    dlq_id: str
    reason: str
    log_id: str
    fields: dict[str, str]  # the original entry's fields, when they were still there
    cut: str = ""  # "N fields, M bytes" when the fields are a cut copy of the entry


def _dead_letter(dlq_id: str, raw: dict[str, str]) -> DeadLetter:
    return DeadLetter(
        dlq_id=dlq_id,
        reason=raw.get("reason", ""),
        log_id=raw.get("log_id", ""),
        cut=raw.get("cut", ""),
        fields={
            k.removeprefix(FIELD_PREFIX): v for k, v in raw.items() if k.startswith(FIELD_PREFIX)
        },
    )


async def list_dead(client: RedisClient, keys: CellKeys, limit: int = 100) -> list[DeadLetter]:
    """The oldest dead letters not requeued yet."""
    requeued = {text(k) for k in await client.hkeys(keys.requeued)}
    found: list[DeadLetter] = []
    async for dlq_id, raw in read_stream(client, keys.dlq):
        if dlq_id not in requeued:
            found.append(_dead_letter(dlq_id, raw))
        if len(found) >= limit:
            break
    return found


def _checked(dlq_id: str) -> str:
    """A dead letter's ID as the stream has it (``<ms>-<seq>``), or a ValueError."""
    if not _ID.match(dlq_id):
        raise ValueError(f"malformed dead-letter ID {dlq_id!r}: expected <ms>-<seq>, as listed")
    return dlq_id


async def find(client: RedisClient, keys: CellKeys, dlq_id: str) -> DeadLetter | None:
    _checked(dlq_id)
    async for found_id, raw in read_stream(client, keys.dlq, dlq_id):
        return _dead_letter(found_id, raw) if found_id == dlq_id else None
    return None


async def requeue(client: RedisClient, keys: CellKeys, dlq_id: str) -> str:
    """Append a dead letter's original fields to the log again, byte for byte (as a new
    entry, at the current time), and note it requeued, in one script. Returns the new
    log ID. Fix what made it invalid first, or it comes right back."""
    script = register(client, "requeue")
    reply = await script(keys=keys.script_keys("requeue"), args=[_checked(dlq_id)])
    if int(reply[0]) == 1:
        return text(reply[1])
    why, detail = text(reply[1]), text(reply[2])
    raise ValueError(
        {
            "missing": f"no dead letter {dlq_id} in {keys.dlq}",
            "requeued": f"dead letter {dlq_id} was requeued already, as {detail}",
            "cut": f"dead letter {dlq_id} kept only part of its entry ({detail})",
        }.get(why, f"dead letter {dlq_id} kept no fields to requeue")
    )
