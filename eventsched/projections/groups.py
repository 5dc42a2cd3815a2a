"""Reading the group-state projection: a session's ordered outcomes, its current
conversation group and its TTS playback window.

groups.lua writes it: outcomes go to the session's output stream strictly in utterance
order (entry ID ``(index+1)-0``); a result that ends early is held until every earlier
utterance has ended; a rejection or failure takes its place in the order. Two kinds of
entry come after the last one instead of at their own place: the outcome of a late
utterance (its first finalize was lost with writes Redis lost) and a notice (status
``notice``: a finalize for a session the cell does not know, or has closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from eventsched.model.keys import CellKeys
from eventsched.store.client import RedisClient
from eventsched.store.streams import read_hash, read_stream, text

__all__ = [
    "GroupView",
    "Outcome",
    "SessionView",
    "outcome_of",
    "read_outcomes",
    "read_session",
]


class Outcome(BaseModel):
    """One ended utterance as its session receives it. ``notice`` is the cell telling
    the gateway it could not take a finalize (``reason`` says why); ``lost`` is made by
    the session client alone, when an utterance got no outcome after every re-send."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    utterance_index: int = Field(alias="idx")
    status: Literal["ok", "rejected", "failed", "notice", "lost"] = Field(alias="st")
    reason: str = ""  # why it was rejected or failed
    error_code: str = Field("", alias="err")
    cut: str = ""  # how the utterance ended: pause | max_length | client
    job_id: str = Field("", alias="job")
    attempt: int | None = Field(None, alias="att")
    node_id: str = Field("", alias="node")
    asr_text: str = Field("", alias="asr")
    nmt_text: str = Field("", alias="nmt")
    tts_audio_ref: str = Field("", alias="tts")
    tts_duration_ms: int | None = Field(None, alias="tts_ms")
    timings: str = ""
    group: int = Field(alias="grp")
    at: str  # log ID of the event that delivered it


@dataclass(frozen=True)
class GroupView:
    group_id: int
    utterances: int
    asr_text: str
    nmt_text: str
    ended: bool  # the last utterance closed the turn (cut by pause or client)


@dataclass(frozen=True)
class SessionView:
    session_id: str
    src_lang: str
    tgt_lang: str
    preferred_pool: str
    closed: bool
    last_delivered: int  # -1 before the first outcome
    in_flight: tuple[int, ...]  # finalized, not yet delivered
    group: GroupView | None
    tts_playing_until_ms: int

    def tts_playing(self, at_ms: int) -> bool:
        """Whether synthesized speech is still playing back at ``at_ms`` (event time):
        the gateway must not take it for the speaker (the seeds' is_tts_playing)."""
        return at_ms < self.tts_playing_until_ms


def _blank_to_none(fields: dict[str, str]) -> dict[str, str | None]:
    return {k: (None if v == "" and k in ("att", "tts_ms") else v) for k, v in fields.items()}


def outcome_of(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Outcome:
    """An output stream entry as an Outcome."""
    return Outcome.model_validate(_blank_to_none({text(k): text(v) for k, v in fields.items()}))


async def read_outcomes(
    client: RedisClient, keys: CellKeys, session_id: str, after_index: int = -1
) -> list[Outcome]:
    """The session's output entries with an utterance index above ``after_index``, in
    stream order."""
    outcomes = [outcome_of(f) async for _, f in read_stream(client, keys.output(session_id))]
    return [o for o in outcomes if o.utterance_index > after_index]


async def read_session(client: RedisClient, keys: CellKeys, session_id: str) -> SessionView | None:
    raw = await read_hash(client, keys.session(session_id))
    if not raw:
        return None
    group = await read_hash(client, keys.group(session_id))
    in_flight = cast(list[bytes], await client.zrange(keys.in_flight(session_id), 0, -1))
    return SessionView(
        session_id=session_id,
        src_lang=raw["src"],
        tgt_lang=raw["tgt"],
        preferred_pool=raw["pool"],
        closed=raw["closed"] == "1",
        last_delivered=int(group.get("last", -1)),
        in_flight=tuple(int(text(i)) for i in in_flight),
        group=GroupView(
            group_id=int(group["gid"]),
            utterances=int(group["n"]),
            asr_text=group["asr"],
            nmt_text=group["nmt"],
            ended=group["ended"] == "1",
        )
        if group
        else None,
        tts_playing_until_ms=int(group.get("tts_until", 0)),
    )
