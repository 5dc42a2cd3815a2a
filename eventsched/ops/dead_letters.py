"""The dead-letter stream of a cell: what could not be applied, with its reason, the ID
it had in the log and copies of its original fields (``f:<name>``)."""

from __future__ import annotations

from dataclasses import dataclass

from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient
from eventsched.store.streams import read_stream, xrange_raw

__all__ = ["DeadLetter", "find", "list_dead", "requeue"]

FIELD_PREFIX = "f:"


@dataclass(frozen=True)
class DeadLetter:
    dlq_id: str
    reason: str
    log_id: str
    fields: dict[str, str]  # the original entry's fields, when they were still there


def _dead_letter(dlq_id: str, raw: dict[str, str]) -> DeadLetter:
    return DeadLetter(
        dlq_id=dlq_id,
        reason=raw.get("reason", ""),
        log_id=raw.get("log_id", ""),
        fields={
            k.removeprefix(FIELD_PREFIX): v for k, v in raw.items() if k.startswith(FIELD_PREFIX)
        },
    )


async def list_dead(client: RedisClient, keys: CellKeys, limit: int = 100) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    async for dlq_id, raw in read_stream(client, keys.dlq):
        found.append(_dead_letter(dlq_id, raw))
        if len(found) >= limit:
            break
    return found


async def find(client: RedisClient, keys: CellKeys, dlq_id: str) -> DeadLetter | None:
    async for found_id, raw in read_stream(client, keys.dlq, dlq_id):
        return _dead_letter(found_id, raw) if found_id == dlq_id else None
    return None


async def requeue(client: RedisClient, keys: CellKeys, dlq_id: str) -> str:
    """Append a dead letter's original fields to the log again (as a new entry, at the
    current time) and remove it from the dead-letter stream, in one transaction.
    Returns the new log ID. Fix what made it invalid first, or it comes right back."""
    entries = await xrange_raw(client, keys.dlq, dlq_id, count=1)
    if not entries or entries[0][0].decode() != dlq_id:
        raise ValueError(f"no dead letter {dlq_id} in {keys.dlq}")
    letter = _dead_letter(dlq_id, {k.decode(): v.decode() for k, v in entries[0][1].items()})
    if not letter.fields:
        raise ValueError(f"dead letter {dlq_id} kept no fields to requeue ({letter.reason})")
    async with client.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.log, letter.fields)  # type: ignore[arg-type]
        pipe.xdel(keys.dlq, dlq_id)
        new_id, _ = await pipe.execute()
    return new_id.decode() if isinstance(new_id, bytes) else str(new_id)
