"""The session client, for gateways: open sessions, finalize utterances, read each
session's ordered outcomes, close. One reader task serves every session of the client
with one blocking XREAD over the output streams of the sessions that wait for an
outcome, so thousands of sessions need one connection for reading, not thousands, and a
read costs Redis what is awaited, not what is open. A session that starts waiting while
the read is blocked rings the client's own wake stream (``CellKeys.wake``), which the
read names too (its finalize's own call rings it), so it returns and reads again with
that session in it. (A confined gateway may write no key of its own: its read names
every open session.)

    async with SessionClient(client, CellKeys()) as gateway:
        session = await gateway.open("s1", "en", "zh")
        await session.finalize(0, "pause", "audio/s1/0.opus", 2300)
        async for outcome in session.outcomes():   # in utterance order
            ...

Nothing the cell acknowledged is given up in silence, even when Redis loses writes it
acknowledged (a crash, a failover, a FLUSHALL): the client keeps every finalize whose
append was acknowledged until its outcome arrives. One with no outcome after
``resend_after_s`` is sent again, after opening the session again (a cell that has the
session ignores that); an ``unknown_session`` notice from the cell does the same at
once; after ``max_sends`` sends the application gets a ``lost`` outcome. Outcomes reach
the application in utterance order, also when the cell serves a re-sent utterance after
later ones. The close is sent once every utterance has its outcome, so a re-sent
finalize still finds the session open.

A client whose Redis user is a gateway's (``eventsched acl add-gateway``) sends through
that gateway's ingress, and its sessions are named ``<gateway>.<id>``: ``open`` puts the
prefix in front of an ID that lacks it, and ``Session.session_id`` is the full name.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from pydantic import ValidationError

from eventsched.clients.background import Background
from eventsched.clients.policy import Reason
from eventsched.clients.retry import patiently
from eventsched.model.events import SessionClosed, SessionOpened, UtteranceFinalized
from eventsched.model.keys import CellKeys
from eventsched.model.principals import session_prefix
from eventsched.model.settings import DecisionSettings
from eventsched.projections.groups import Outcome, outcome_of
from eventsched.store.append import decide_at_append, source_of, submit
from eventsched.store.client import RedisClient
from eventsched.store.streams import id_after, text, xread_raw

__all__ = ["DEFAULT_RESEND_S", "Session", "SessionClient"]

_BUFFER = 10_000  # outcomes a slow reader may fall behind by before the reader waits
# Twice the default job timeout: an utterance that has had no outcome for that long has
# most likely been lost with writes Redis lost (a re-send of one still running is
# ignored by the cell).
DEFAULT_RESEND_S = 2 * DecisionSettings().job_timeout_ms / 1000
_CHECK_S = 0.5  # how often the reader looks for finalizes due to be sent again


@dataclass
class _Unanswered:
    event: UtteranceFinalized
    sends: int
    due: float  # anyio.current_time() at which it is sent again


class Session:
    def __init__(self, client: SessionClient, session_id: str, src_lang: str, tgt_lang: str):
        self.client = client
        self.session_id = session_id
        self.opened = SessionOpened(session_id=session_id, src_lang=src_lang, tgt_lang=tgt_lang)
        self.finalized = 0  # finalizes whose append Redis acknowledged
        self.received = 0  # outcomes handed to the application, lost ones included
        self.lost = 0  # utterances given up after max_sends sends with no outcome
        self.resent = 0  # finalizes sent again
        self.closing = False
        self._unanswered: dict[int, _Unanswered] = {}
        self._arrived: dict[int, Outcome] = {}  # outcomes waiting for an earlier one
        self._opened_at = "0-0"  # log ID of the last (re-)open; older notices are stale
        self._send, self._receive = anyio.create_memory_object_stream[Outcome](_BUFFER)

    async def finalize(
        self, utterance_index: int, reason: Reason, audio_ref: str, duration_ms: int
    ) -> None:
        if self.closing:
            raise RuntimeError(f"session {self.session_id} is closing")
        if utterance_index in self._unanswered:
            raise ValueError(f"utterance {utterance_index} is already waiting for its outcome")
        event = UtteranceFinalized(
            session_id=self.session_id,
            utterance_index=utterance_index,
            reason=reason,
            audio_ref=audio_ref,
            duration_ms=duration_ms,
        )
        # Kept before the append, so an outcome that comes back at once finds it.
        self._unanswered[utterance_index] = _Unanswered(event, 1, self.client.resend_due())
        try:
            await self.client.send_finalize(self, event)
        except BaseException:
            del self._unanswered[utterance_index]
            raise
        self.finalized += 1

    async def outcomes(self) -> AsyncIterator[Outcome]:
        """Every outcome of the session in utterance order, as it is delivered (one
        reader per session); ends once the session is closed and every utterance it
        finalized has its outcome."""
        try:
            async for outcome in self._receive:
                yield outcome
        except anyio.ClosedResourceError:
            return  # the client was closed under the reader: nothing more comes

    async def close(self) -> None:
        """No more utterances. Outcomes of those still running keep coming; the cell is
        told once the last has arrived."""
        self.closing = True
        await self._finish_if_done()

    @property
    def unanswered(self) -> list[int]:
        return sorted(self._unanswered)

    async def _arrive(self, outcome: Outcome) -> None:
        index = outcome.utterance_index
        if index not in self._unanswered:
            return  # handed out already (a repeat after a re-send), or not ours
        if outcome.status == "notice" and outcome.reason == "unknown_session":
            if id_after(outcome.at, self._opened_at):  # not answered by a re-open yet
                await self._send_again(self.unanswered)
            return
        self._arrived[index] = outcome  # a session_closed notice ends the utterance too
        await self._hand_out()

    async def _send_again(self, indexes: list[int]) -> None:
        """Open the session again (the cell ignores that when it has the session) and
        send these finalizes again in index order; those sent ``max_sends`` times are
        given up as lost instead. One whose outcome has arrived is left alone."""
        self.client.read_again(self)
        self._opened_at = await self.client.emit(self.opened)
        for index in indexes:
            waiting = self._unanswered[index]
            if index in self._arrived:
                continue
            if waiting.sends >= self.client.max_sends:
                self.lost += 1
                self._arrived[index] = Outcome(
                    utterance_index=index,
                    status="lost",
                    reason="no_outcome",
                    cut=waiting.event.reason,
                    group=0,
                    at="",
                )
                continue
            waiting.sends += 1
            waiting.due = self.client.resend_due()
            self.resent += 1
            await self.client.emit(waiting.event)
        await self._hand_out()

    def _due(self, now: float) -> list[int]:
        """The utterances waiting too long for an outcome (one that has arrived only
        waits for an earlier one's), in index order."""
        return [
            index
            for index, waiting in sorted(self._unanswered.items())
            if waiting.due <= now and index not in self._arrived
        ]

    async def _hand_out(self) -> None:
        """Hand the application every outcome whose earlier utterances have theirs."""
        while self._unanswered:
            first = min(self._unanswered)
            outcome = self._arrived.pop(first, None)
            if outcome is None:
                break
            del self._unanswered[first]
            await self._send.send(outcome)  # a reader far behind holds the reading back
            self.received += 1
        await self._finish_if_done()

    async def _finish_if_done(self) -> None:
        if self.closing and not self._unanswered and self.client.forget(self):
            await self.client.emit(SessionClosed(session_id=self.session_id))
            self._send.close()

    def _release(self) -> None:
        """The client is done: a reader of outcomes() sees their end, not an error."""
        self._send.close()
        self._receive.close()


class SessionClient(Background):
    def __init__(
        self,
        client: RedisClient,
        keys: CellKeys,
        block_ms: int = 100,
        resend_after_s: float = DEFAULT_RESEND_S,
        max_sends: int = 3,
    ) -> None:
        if resend_after_s <= 0 or max_sends < 1:
            raise ValueError("resend_after_s must be positive and max_sends at least 1")
        self.redis = client
        self.keys = keys
        self.source = source_of(client, keys, "gateway", None)  # None: trusted, the log
        self.block_ms = block_ms
        self.resend_after_s = resend_after_s
        self.max_sends = max_sends
        self._sessions: dict[str, Session] = {}  # output stream -> open session
        self._opened: list[Session] = []
        self._cursors: dict[str, str] = {}
        self._next_check = 0.0
        # The wake stream (None for a confined gateway), where it was read to, and the
        # streams the blocking read in flight names (None between reads).
        self._wake = None if self.source is not None else keys.wake(uuid.uuid4().hex)
        self._wake_cursor = "0-0"
        self._reading: frozenset[str] | None = None

    def resend_due(self) -> float:
        return anyio.current_time() + self.resend_after_s

    async def emit(
        self, event: SessionOpened | UtteranceFinalized | SessionClosed, wake: str | None = None
    ) -> str:
        """Send one event (riding out outages); ``wake``: ring that wake stream in the same
        call (a trusted client's finalize, see ``send_finalize``)."""
        if wake is not None:
            return await patiently(
                lambda: decide_at_append(self.redis, self.keys, event, wake=wake)
            )
        return await patiently(lambda: submit(self.redis, self.keys, self.source, event))

    async def send_finalize(self, session: Session, event: UtteranceFinalized) -> None:
        """Send a finalize, whose session now waits for an outcome: when the blocking
        read does not name it, the finalize's own call rings the wake stream (a trusted
        client's only: a confined one's read names every session)."""
        stream = self.keys.output(session.session_id)
        unread = self._reading is not None and stream not in self._reading
        await self.emit(event, self._wake if unread else None)

    def _to_read(self) -> dict[str, str]:
        """The streams a read names and where each is read from."""
        if self._wake is None:
            return dict(self._cursors)
        cursors = {
            stream: cursor
            for stream, cursor in self._cursors.items()
            if self._sessions[stream]._unanswered
        }
        cursors[self._wake] = self._wake_cursor
        return cursors

    def session_name(self, session_id: str) -> str:
        """The session's full ID: a confined gateway's sessions carry its name first."""
        if self.source is None:
            return session_id
        prefix = session_prefix(self.source.partition(":")[2])
        return session_id if session_id.startswith(prefix) else prefix + session_id

    async def open(self, session_id: str, src_lang: str, tgt_lang: str) -> Session:
        session = Session(self, self.session_name(session_id), src_lang, tgt_lang)
        stream = self.keys.output(session.session_id)
        self._sessions[stream] = session
        self._opened.append(session)
        self._cursors[stream] = "0-0"
        session._opened_at = await self.emit(session.opened)
        return session

    def forget(self, session: Session) -> bool:
        """Stop reading the session; whether it was still being read."""
        stream = self.keys.output(session.session_id)
        self._cursors.pop(stream, None)
        return self._sessions.pop(stream, None) is not None

    async def read_once(self) -> int:
        """One multiplexed read over the sessions that wait for an outcome (see the
        module doc); returns the entries read."""
        cursors = self._to_read()
        if not cursors:
            await anyio.sleep(self.block_ms / 1000)
            return 0
        self._reading = frozenset(cursors)
        try:
            reply = await patiently(lambda: xread_raw(self.redis, cursors, self.block_ms))
        finally:
            self._reading = None
        read = 0
        for stream_name, entries in reply:
            stream = text(stream_name)
            if stream == self._wake:
                self._wake_cursor = text(entries[-1][0])
                continue
            for entry_id, fields in entries:
                session = self._sessions.get(stream)
                if session is None:  # closed and complete
                    break
                self._cursors[stream] = text(entry_id)
                read += 1
                try:
                    outcome = outcome_of(fields)
                except ValidationError:
                    continue  # not an output entry: nothing to hand out
                await session._arrive(outcome)
                if self._cursors.get(stream) == "0-0":
                    break  # sent again: the stream is read from the start next time
        return read

    async def send_due(self) -> None:
        """Send again every finalize that has waited too long for its outcome (checked
        every half second at most)."""
        now = anyio.current_time()
        if now >= self._next_check:
            self._next_check = now + min(_CHECK_S, self.resend_after_s)
            await self._send_again_due(now)

    async def resend_now(self) -> None:
        """Send again every finalize still waiting for its outcome, without waiting for
        ``resend_after_s``: for a gateway that knows Redis failed over or restarted."""
        await self._send_again_due(float("inf"))

    async def _send_again_due(self, now: float) -> None:
        for session in list(self._sessions.values()):
            due = session._due(now)
            if due:
                await session._send_again(due)

    def read_again(self, session: Session) -> None:
        """Read the session's output stream from the start again: after Redis lost
        writes it may have begun again below where it was read to (the same IDs, other
        entries). What the session has handed out already is skipped."""
        stream = self.keys.output(session.session_id)
        if stream in self._cursors:
            self._cursors[stream] = "0-0"

    async def run(self) -> None:
        """Read outcomes and send again what is due, until cancelled (the context
        manager's task; a caller with a task group of its own runs it there and calls
        ``release`` after)."""
        while True:
            await self.read_once()
            await self.send_due()

    def release(self) -> None:
        """The client is done: each session's reader sees the end of its outcomes."""
        for session in self._opened:
            session._release()

    def started(self, group: anyio.abc.TaskGroup) -> None:
        group.start_soon(self.run)

    def ended(self) -> None:
        self.release()
