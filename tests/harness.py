"""A cell under test: append events at chosen event times, apply, read what came out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import anyio

from eventsched.dispatch.worker import Worker
from eventsched.model.events import (
    ENTRY_FIELD,
    Event,
    JobResult,
    NodeHeartbeat,
    NodeRegistered,
    Services,
    SessionOpened,
    SettingsChanged,
    UtteranceFinalized,
    encode_event,
)
from eventsched.model.keys import CellKeys
from eventsched.model.settings import DEFAULTS
from eventsched.store.append import append_many
from eventsched.store.client import RedisClient
from eventsched.store.streams import read_hash, read_stream, text

__all__ = [
    "START_MS",
    "Cell",
    "beat",
    "error",
    "finalize",
    "node",
    "ok",
    "session",
    "wait_for",
]

START_MS = 1_700_000_000_000


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    """Wait on a condition (never a bare sleep), failing the test after the timeout."""
    with anyio.fail_after(timeout_s):
        while not await condition():
            await anyio.sleep(0.01)


def node(
    node_id: str,
    langs: Sequence[str] = ("en", "zh"),
    max_concurrency: int = 2,
    semantic: Sequence[str] | None = None,
    asr: Sequence[str] | None = None,
    tts: Sequence[str] | None = None,
) -> NodeRegistered:
    return NodeRegistered(
        node_id=node_id,
        services=Services(
            asr=list(asr if asr is not None else langs),
            nmt=list(langs),
            tts=list(tts if tts is not None else langs),
        ),
        semantic_languages=list(semantic if semantic is not None else langs),
        max_concurrency=max_concurrency,
        gpu="test-gpu",
    )


def session(session_id: str, src: str = "en", tgt: str = "zh") -> SessionOpened:
    return SessionOpened(session_id=session_id, src_lang=src, tgt_lang=tgt)


def finalize(session_id: str, index: int, reason: str = "pause") -> UtteranceFinalized:
    return UtteranceFinalized(
        session_id=session_id,
        utterance_index=index,
        reason=reason,  # type: ignore[arg-type]
        audio_ref=f"audio/{session_id}/{index}",
        duration_ms=1000,
    )


def ok(job_id: str, attempt: int, node_id: str, tts_ms: int = 0) -> JobResult:
    return JobResult(
        job_id=job_id,
        attempt=attempt,
        node_id=node_id,
        ok=True,
        asr_text=f"asr {job_id}",
        nmt_text=f"nmt {job_id}",
        tts_audio_ref=f"tts/{job_id}",
        tts_duration_ms=tts_ms,
    )


def error(job_id: str, attempt: int, node_id: str, code: str = "MODEL_NOT_AVAILABLE") -> JobResult:
    return JobResult(job_id=job_id, attempt=attempt, node_id=node_id, ok=False, error_code=code)


def beat(node_id: str, cpu: int = 10, gpu: int = 10, mem: int = 10) -> NodeHeartbeat:
    return NodeHeartbeat(node_id=node_id, cpu_pct=cpu, gpu_pct=gpu, mem_pct=mem)


class Cell:
    """One cell in one namespace, with a logical clock for the IDs it appends."""

    def __init__(self, client: RedisClient, keys: CellKeys) -> None:
        self.client = client
        self.keys = keys
        self.now_ms = START_MS
        self.settings = DEFAULTS  # what the log put in force (configure)
        self._worker: Worker | None = None

    async def configure(self, **changes: int) -> None:
        """Change decision settings as an operator does: a settings_changed event at the
        current event time, in force for the entries after it."""
        self.settings = self.settings.changed(changes)
        await self.append(SettingsChanged(settings=changes))

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    async def append_fields(self, fields: dict[str, str]) -> str:
        entry_id = await self.client.xadd(self.keys.log, fields, id=f"{self.now_ms}-*")  # type: ignore[arg-type]
        return text(entry_id)

    async def append_live(self, *events: Event) -> list[str]:
        """Append with IDs from the server's clock, as live producers do."""
        return await append_many(self.client, self.keys, events)

    async def append(self, *events: Event) -> list[str]:
        return [await self.append_fields({ENTRY_FIELD: encode_event(e)}) for e in events]

    async def apply(self) -> int:
        if self._worker is None:
            self._worker = Worker(self.client, [self.keys], name="test-worker")
        return await self._worker.drain()

    async def stop(self) -> None:
        """The worker goes and hands its roles back: until one applies again, appends
        (decided at append ones too) wait in the log."""
        if self._worker is not None:
            await self._worker.release()
            self._worker = None

    async def step(self, *events: Event) -> None:
        """Append the events at the current event time and apply them."""
        await self.append(*events)
        await self.apply()

    async def stream(self, key: str) -> list[dict[str, str]]:
        return [fields async for _, fields in read_stream(self.client, key)]

    async def decisions(self, kind: str | None = None) -> list[dict[str, str]]:
        found = await self.stream(self.keys.decisions)
        return [d for d in found if kind is None or d["k"] == kind]

    async def outputs(self, session_id: str) -> list[dict[str, str]]:
        return await self.stream(self.keys.output(session_id))

    async def inbox(self, node_id: str) -> list[dict[str, str]]:
        return await self.stream(self.keys.inbox(node_id))

    async def dlq(self) -> list[dict[str, str]]:
        return await self.stream(self.keys.dlq)

    async def hash(self, key: str) -> dict[str, str]:
        return await read_hash(self.client, key)

    async def pool_members(self, pool: str) -> list[tuple[str, float]]:
        raw = await self.client.zrange(self.keys.pool(pool), 0, -1, withscores=True)
        return [(text(member), float(score)) for member, score in cast(list[Any], raw)]

    async def dispatched_to(self) -> dict[str, str]:
        """Job id -> node of its latest dispatch."""
        return {d["job"]: d["node"] for d in await self.decisions("d")}
