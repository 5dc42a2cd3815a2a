"""The session client, for gateways: open sessions, finalize utterances, read each
session's ordered outcomes, close. One reader task serves every session of the client
with one blocking XREAD over all their output streams, so thousands of sessions need
one connection for reading, not thousands.

    async with SessionClient(client, CellKeys()) as gateway:
        session = await gateway.open("s1", "en", "zh")
        await session.finalize(0, "pause", "audio/s1/0.opus", 2300)
        async for outcome in session.outcomes():   # in utterance order
            ...

``FinalizePolicy`` is the gateway-side decision of when an utterance ends (the seeds'
SessionActor), driven by explicit timestamps so it is testable without a clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import anyio

from eventsched.clients.retry import patiently
from eventsched.model.events import SessionClosed, SessionOpened, UtteranceFinalized
from eventsched.model.keys import CellKeys
from eventsched.projections.groups import Outcome, outcome_of
from eventsched.store.append import append
from eventsched.store.client import RedisClient
from eventsched.store.streams import text, xread_raw

__all__ = ["Finalize", "FinalizePolicy", "Session", "SessionClient"]

Reason = Literal["pause", "max_length", "client"]
_BUFFER = 10_000  # outcomes a slow reader may fall behind by before the reader waits


class Session:
    def __init__(self, client: SessionClient, session_id: str) -> None:
        self.client = client
        self.session_id = session_id
        self.finalized = 0
        self.received = 0
        self.closing = False
        self._send, self._receive = anyio.create_memory_object_stream[Outcome](_BUFFER)

    async def finalize(
        self, utterance_index: int, reason: Reason, audio_ref: str, duration_ms: int
    ) -> None:
        await self.client.emit(
            UtteranceFinalized(
                session_id=self.session_id,
                utterance_index=utterance_index,
                reason=reason,
                audio_ref=audio_ref,
                duration_ms=duration_ms,
            )
        )
        self.finalized += 1

    async def outcomes(self) -> AsyncIterator[Outcome]:
        """Every outcome of the session in utterance order, as it is delivered (one
        reader per session); ends once the session is closed and every utterance it
        finalized has been delivered."""
        async for outcome in self._receive:
            yield outcome

    async def close(self) -> None:
        """No more utterances. Outcomes of those still running keep coming: the
        session is read until each finalized utterance has its outcome."""
        await self.client.emit(SessionClosed(session_id=self.session_id))
        self.closing = True
        self._finish_if_done()

    async def _deliver(self, outcome: Outcome) -> None:
        await self._send.send(outcome)  # a reader far behind holds the reading back
        self.received += 1
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        if self.closing and self.received >= self.finalized:
            self.client.forget(self)
            self._send.close()

    def _release(self) -> None:
        self._send.close()
        self._receive.close()


class SessionClient:
    def __init__(self, client: RedisClient, keys: CellKeys, block_ms: int = 100) -> None:
        self.redis = client
        self.keys = keys
        self.block_ms = block_ms
        self._sessions: dict[str, Session] = {}  # output stream -> open session
        self._opened: list[Session] = []
        self._cursors: dict[str, str] = {}
        self._group: anyio.abc.TaskGroup | None = None

    async def emit(self, event: SessionOpened | UtteranceFinalized | SessionClosed) -> None:
        await patiently(lambda: append(self.redis, self.keys, event))

    async def open(self, session_id: str, src_lang: str, tgt_lang: str) -> Session:
        session = Session(self, session_id)
        stream = self.keys.output(session_id)
        self._sessions[stream] = session
        self._opened.append(session)
        self._cursors[stream] = "0-0"
        await self.emit(SessionOpened(session_id=session_id, src_lang=src_lang, tgt_lang=tgt_lang))
        return session

    def forget(self, session: Session) -> None:
        stream = self.keys.output(session.session_id)
        self._sessions.pop(stream, None)
        self._cursors.pop(stream, None)

    async def read_once(self) -> int:
        """One multiplexed read over every open session; returns outcomes handed out."""
        if not self._cursors:
            await anyio.sleep(self.block_ms / 1000)
            return 0
        cursors = dict(self._cursors)
        reply = await patiently(lambda: xread_raw(self.redis, cursors, self.block_ms))
        handed = 0
        for stream_name, entries in reply:
            stream = text(stream_name)
            session = self._sessions.get(stream)
            for entry_id, fields in entries:
                if session is None:
                    break
                self._cursors[stream] = text(entry_id)
                await session._deliver(outcome_of(fields))
                handed += 1
                if stream not in self._sessions:  # closed and complete
                    break
        return handed

    async def _read_forever(self) -> None:
        while True:
            await self.read_once()

    async def __aenter__(self) -> SessionClient:
        self._group = await anyio.create_task_group().__aenter__()
        self._group.start_soon(self._read_forever)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool | None:
        assert self._group is not None
        self._group.cancel_scope.cancel()
        try:
            return await self._group.__aexit__(kind, error, trace)
        finally:  # also when the block or the reader failed
            for session in self._opened:
                session._release()


@dataclass(frozen=True)
class Finalize:
    utterance_index: int
    reason: Reason
    duration_ms: int  # audio buffered in the utterance


class FinalizePolicy:
    """When an utterance ends, from audio chunks and their times (the seeds'
    SessionActor): after a pause longer than ``pause_ms`` plus a hangover of 0-200 ms,
    at ``max_utterance_ms`` of buffered speech, or when the client says so. Speech heard
    while the session's own synthesized audio plays back (``tts_playing_until``) is
    not taken for the speaker."""

    def __init__(
        self, pause_ms: int = 600, hangover_ms: int = 120, max_utterance_ms: int = 10_000
    ) -> None:
        if not 0 <= hangover_ms <= 200:
            raise ValueError("hangover_ms must be within 0-200")
        self.pause_ms = pause_ms
        self.hangover_ms = hangover_ms
        self.max_utterance_ms = max_utterance_ms
        self.next_index = 0
        self.tts_playing_until = 0
        self._buffered_ms = 0
        self._last_speech_end: int | None = None

    def _end(self, reason: Reason) -> Finalize:
        ended = Finalize(self.next_index, reason, self._buffered_ms)
        self.next_index += 1
        self._buffered_ms = 0
        self._last_speech_end = None
        return ended

    def audio(self, at_ms: int, duration_ms: int, voiced: bool) -> Finalize | None:
        """A chunk of ``duration_ms`` starting at ``at_ms``; ``voiced`` from the VAD."""
        if voiced and at_ms < self.tts_playing_until:
            voiced = False  # our own playback, heard back
        if voiced:
            self._buffered_ms += duration_ms
            self._last_speech_end = at_ms + duration_ms
            if self._buffered_ms >= self.max_utterance_ms:
                return self._end("max_length")
            return None
        return self.tick(at_ms + duration_ms)

    def tick(self, now_ms: int) -> Finalize | None:
        """Time passed with no speech: end the utterance after pause plus hangover."""
        if self._last_speech_end is None:
            return None
        if now_ms - self._last_speech_end >= self.pause_ms + self.hangover_ms:
            return self._end("pause")
        return None

    def client_says_done(self) -> Finalize | None:
        return self._end("client") if self._last_speech_end is not None else None
