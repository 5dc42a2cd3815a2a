"""When an utterance ends, decided on the gateway (the seeds' SessionActor), driven by
explicit timestamps so it is testable without a clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Finalize", "FinalizePolicy", "Reason"]

Reason = Literal["pause", "max_length", "client"]


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
