"""The node SDK: what a GPU node runs to serve eventsched.

    async def translate(job: Job) -> JobOutput: ...
    node = Node(client, CellKeys(), "gpu-7", Services(asr=["en"], nmt=["en", "zh"],
                tts=["zh"]), max_concurrency=4, handler=translate)
    async with node:          # registers, heartbeats, takes jobs
        await anyio.sleep_forever()
    # leaving the block drains: no new jobs, running ones finish, then it deregisters

The node appends its events (register, heartbeat, result, drain, deregister) to the
cell's log and takes jobs from its inbox stream through the consumer group ``node``, so
a node restarted under the same id gets its unacknowledged jobs again. A result is
appended and its job acknowledged in one MULTI/EXEC (the inbox shares the log's hash
tag); a retried transaction may append the result twice, and the scheduler ignores the
second. A node whose Redis user is its own (``eventsched acl add-node``) appends to its
ingress stream instead and rings the cell's bell (docs/SECURITY.md); the user must be
this node's of this cell. docs/PROTOCOL.md is the contract.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from redis.exceptions import ResponseError

from eventsched.clients.background import Background
from eventsched.clients.gpu import gpu_load
from eventsched.clients.retry import patiently
from eventsched.model.events import (
    Event,
    JobResult,
    NodeDeregistered,
    NodeDraining,
    NodeHeartbeat,
    NodeRegistered,
    Services,
    StageTimings,
)
from eventsched.model.keys import INBOX_GROUP, CellKeys
from eventsched.store.append import decide_at_append, queue_submit, source_of, submit
from eventsched.store.client import UNREACHABLE, RedisClient, is_cluster
from eventsched.store.streams import text, xreadgroup_raw

__all__ = ["HANDLER_ERROR", "Job", "JobFailed", "JobOutput", "Node", "machine_load"]

log = logging.getLogger("eventsched.node")

HANDLER_ERROR = "HANDLER_ERROR"  # the code of a result whose handler raised
_BACKOFF_MAX_S = 2.0
_REREGISTER_AFTER_S = 5.0


@dataclass(frozen=True)
class Job:
    job_id: str
    attempt: int
    session_id: str
    utterance_index: int
    src_lang: str
    tgt_lang: str
    audio_ref: str
    deadline_ms: int  # event time (ms since the epoch) after which it is retried elsewhere
    entry_id: str  # the inbox entry, acknowledged once the result is appended

    @classmethod
    def from_entry(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> Job:
        get = {text(k): text(v) for k, v in fields.items()}
        return cls(
            job_id=get["job"],
            attempt=int(get["att"]),
            session_id=get["sid"],
            utterance_index=int(get["idx"]),
            src_lang=get["src"],
            tgt_lang=get["tgt"],
            audio_ref=get["audio"],
            deadline_ms=int(get["dl"]),
            entry_id=text(entry_id),
        )


@dataclass(frozen=True)
class JobOutput:
    asr_text: str = ""
    nmt_text: str = ""
    tts_audio_ref: str = ""
    tts_duration_ms: int = 0
    timings: StageTimings = field(default_factory=StageTimings)


class JobFailed(Exception):
    """Raise from a handler to report an error code, e.g. MODEL_NOT_AVAILABLE; the
    scheduler retries the job on another node."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


Handler = Callable[[Job], Awaitable[JobOutput]]


def machine_load() -> tuple[int, int | None, int]:
    """CPU, GPU and memory use in percent, as well as this machine can tell (Linux:
    load average over cores, MemAvailable; the GPU through NVML, None without one)."""
    try:
        cpu = min(100, round(100 * os.getloadavg()[0] / (os.cpu_count() or 1)))
    except OSError:
        cpu = 0
    mem = 0
    with contextlib.suppress(OSError, ValueError, KeyError):
        info = {}
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(":")
                info[name] = int(rest.split()[0])
        mem = round(100 * (1 - info["MemAvailable"] / info["MemTotal"]))
    return cpu, gpu_load(), mem


class Node(Background):
    def __init__(
        self,
        client: RedisClient,
        keys: CellKeys,
        node_id: str,
        services: Services,
        max_concurrency: int,
        handler: Handler,
        semantic_languages: list[str] | None = None,
        gpu: str = "",
        heartbeat_s: float = 1.0,
        load: Callable[[], tuple[int, int | None, int]] = machine_load,
    ) -> None:
        self.client = client
        self.keys = keys
        self.registration = NodeRegistered(
            node_id=node_id,
            services=services,
            semantic_languages=semantic_languages or [],
            max_concurrency=max_concurrency,
            gpu=gpu,
        )
        self.node_id = node_id
        self.source = source_of(client, keys, "node", node_id)  # None: trusted, the log
        self.handler = handler
        self.heartbeat_s = heartbeat_s
        self.load = load
        self.running: dict[str, Job] = {}
        self.completed = 0
        self.reregistered = 0  # times the cell had lost the node and it registered again
        self._free = anyio.Semaphore(max_concurrency)  # free job slots
        self._draining = anyio.Event()
        self._stopped = anyio.Event()

    async def _emit(self, event: Event) -> None:
        await patiently(lambda: submit(self.client, self.keys, self.source, event), outage_s=None)

    async def run(self) -> None:
        """Register, heartbeat and serve until ``drain()``; then finish the running
        jobs and deregister."""
        await self._emit(self.registration)
        async with anyio.create_task_group() as group:
            group.start_soon(self._heartbeats)
            async with anyio.create_task_group() as jobs:
                await self._take_jobs(jobs)
            group.cancel_scope.cancel()
        await self._emit(NodeDeregistered(node_id=self.node_id))
        self._stopped.set()

    async def drain(self) -> None:
        """Stop taking jobs, let the running ones finish, deregister; returns when done."""
        if not self._draining.is_set():
            await self._emit(NodeDraining(node_id=self.node_id))
            self._draining.set()
        await self._stopped.wait()

    def started(self, group: anyio.abc.TaskGroup) -> None:
        group.start_soon(self.run)

    async def stopping(self, group: anyio.abc.TaskGroup, cleanly: bool) -> None:
        """A block that ends cleanly drains the node; one that raised stops it at once."""
        if cleanly:
            await self.drain()
        else:
            group.cancel_scope.cancel()

    async def _heartbeats(self) -> None:
        while True:
            cpu, gpu, mem = self.load()
            beat = NodeHeartbeat(
                node_id=self.node_id,
                cpu_pct=cpu,
                gpu_pct=gpu,
                mem_pct=mem,
                running_jobs=sorted(self.running)[:1024],
            )
            await self._emit(beat)
            await anyio.sleep(self.heartbeat_s)

    async def _take_jobs(self, jobs: anyio.abc.TaskGroup) -> None:
        cursor = "0"  # unacknowledged jobs from before a restart first, then ">"
        inbox = self.keys.inbox(self.node_id)
        backoff = missing_s = 0.0
        had_inbox = False
        while not self._draining.is_set():
            await self._free.acquire()  # wait for a free slot; take as many as are free
            if self._draining.is_set():  # drained while every slot was busy
                self._free.release()
                break
            wanted = 1 + self._free.value
            try:
                reply = await xreadgroup_raw(
                    self.client,
                    INBOX_GROUP,
                    self.node_id,
                    {inbox: cursor},
                    wanted,
                    None if cursor != ">" else 100,
                )
                backoff = missing_s = 0.0
                had_inbox = True
            except UNREACHABLE:
                self._free.release()
                backoff = min(max(backoff * 2, 0.05), _BACKOFF_MAX_S)
                await anyio.sleep(backoff)
                continue
            except ResponseError:
                # NOGROUP, or UNBLOCKED when the inbox was deleted under the read: the
                # cell does not know this node (any more). Right after registering the
                # scheduler may just not have applied it yet: wait, and register again
                # if it stays missing. An inbox that was there and vanished means the
                # cell lost the node (Redis lost writes, or was flushed): register now.
                self._free.release()
                backoff = min(max(backoff * 2, 0.05), _BACKOFF_MAX_S)
                missing_s += backoff
                if had_inbox or missing_s >= _REREGISTER_AFTER_S:
                    log.warning(
                        "node %s: the cell does not know it; registering again", self.node_id
                    )
                    had_inbox, missing_s, cursor = False, 0.0, ">"
                    self.reregistered += 1
                    await self._emit(self.registration)
                await anyio.sleep(backoff)
                continue
            entries = [entry for _, found in reply for entry in found]
            if not entries:
                cursor = ">"
                self._free.release()
                continue
            if cursor != ">":  # pending entries, read past the ones now in hand
                cursor = text(entries[-1][0])
            for position, (entry_id, fields) in enumerate(entries):
                if position:
                    self._free.acquire_nowait()  # free: only jobs ending add slots
                if not fields:  # trimmed while pending: nothing to run
                    await self.client.xack(inbox, INBOX_GROUP, entry_id)
                    self._free.release()
                    continue
                job = Job.from_entry(entry_id, fields)
                self.running[job.job_id] = job
                jobs.start_soon(self._serve, job)

    async def _serve(self, job: Job) -> None:
        try:
            try:
                output = await self.handler(job)
                result = JobResult(
                    job_id=job.job_id,
                    attempt=job.attempt,
                    node_id=self.node_id,
                    ok=True,
                    asr_text=output.asr_text,
                    nmt_text=output.nmt_text,
                    tts_audio_ref=output.tts_audio_ref,
                    tts_duration_ms=output.tts_duration_ms,
                    timings=output.timings,
                )
            except JobFailed as failure:
                result = _error(job, self.node_id, failure.code)
            except Exception:  # a handler bug must not lose the job: report it
                log.exception("job %s attempt %d: handler raised", job.job_id, job.attempt)
                result = _error(job, self.node_id, HANDLER_ERROR)
            await patiently(lambda: self._report(job, result), outage_s=None)
            self.completed += 1
        finally:
            self.running.pop(job.job_id, None)
            self._free.release()

    async def _report(self, job: Job, result: JobResult) -> None:
        """The result appended and the job acknowledged in one call, never an
        acknowledgement without its result: a trusted node's in the script that decides
        it (store.append.decide_at_append), a confined one's in a transaction. When the
        inbox group is gone (the cell lost the node) there is nothing to acknowledge:
        the result is still appended, and the cell ignores a result for a job it does
        not know. A confined node on a cluster takes two round trips in that order:
        redis-py's asyncio cluster pipeline runs each command of a transaction in a
        thread of its own and blocks the event loop meanwhile, which held every job of a
        load generator's nodes back (py-spy). A node that dies between them runs the job
        again and the cell ignores the repeat."""
        if self.source is None:
            await decide_at_append(self.client, self.keys, result, (self.node_id, job.entry_id))
            return
        inbox = self.keys.inbox(self.node_id)
        if is_cluster(self.client):
            await submit(self.client, self.keys, self.source, result)
            with contextlib.suppress(ResponseError):  # NOGROUP: nothing to acknowledge
                await self.client.xack(inbox, INBOX_GROUP, job.entry_id)
            return
        async with self.client.pipeline(transaction=True) as pipe:
            queue_submit(pipe, self.keys, self.source, result)
            pipe.xack(inbox, INBOX_GROUP, job.entry_id)
            appended, *_ = await pipe.execute(raise_on_error=False)
        if isinstance(appended, Exception):
            raise appended


def _error(job: Job, node_id: str, code: str) -> JobResult:
    return JobResult(
        job_id=job.job_id, attempt=job.attempt, node_id=node_id, ok=False, error_code=code
    )
