"""A small pure-Python model of one cell's rules, written from README's rules and not
from the Lua: dispatch (idempotency, rate limit, least loaded with a free slot, fresh
heartbeat, excluded node, MODEL_NOT_AVAILABLE windows), results and retries, liveness,
drain, capacity changes, the bounded wait for a slot, and ordered delivery with
conversation groups. It knows one language pair and the one derived pool its nodes make
(pools and the language index are covered by the replay fixtures).
tests/test_model.py compares it with the real applier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

from eventsched.model.settings import DecisionSettings

__all__ = ["CellModel"]

PAIR = "en>zh"
FULL = 1000
SERVE_MAX, QUEUE_LOOK = 64, 8  # placements per serve; waiting jobs looked at past a head
F = TypeVar("F", bound=Callable[..., Any])


def _entry(handler: F) -> F:
    """One log entry: once applied, if a slot may have become usable (a release, a node
    joining its pool, a beat after a silence) and something waits, the queue is served."""

    @wraps(handler)
    def applied(self: CellModel, *args: Any, **kwargs: Any) -> Any:
        self.capacity_changed = False
        outcome = handler(self, *args, **kwargs)
        if self.capacity_changed and self._waiting():
            self._serve()
        return outcome

    return applied  # type: ignore[return-value]


@dataclass
class _Node:
    mc: int
    hb: int
    run: int = 0
    st: str = "up"
    load: tuple[int, int, int] = (0, 0, 0)  # cpu, gpu, mem
    drained: bool = False  # was draining when it went silent
    unavailable_until: int = 0
    strikes: int = 0  # jobs timed out in a row
    quarantined_until: int = 0
    in_pool: bool = False  # up and not overloaded, as of its last state change or beat
    jobs: set[str] = field(default_factory=set)


@dataclass
class _Session:
    tokens: int  # milli-tokens
    refilled_at: int
    top: int = -1
    closed: bool = False
    rejected: set[int] = field(default_factory=set)  # rejected, or its job record expired
    in_flight: set[int] = field(default_factory=set)
    held: dict[int, dict[str, str]] = field(default_factory=dict)
    group: tuple[int, int, bool] | None = None  # id, utterances, ended


@dataclass
class _Job:
    sid: str
    idx: int
    cut: str
    att: int = 0
    node: str = ""
    st: str = "run"  # run, done, failed, or wait: for a slot, for attempt `waits_for`
    deadline: int = 0
    waits_for: int = 0
    since: int = 0  # when it began waiting
    until: int = 0  # when its wait ends
    keep_off: str = ""  # the node a waiting retry may not go back to
    last_err: str = ""  # what ended the attempt before a waiting retry


class CellModel:
    def __init__(self, settings: DecisionSettings) -> None:
        self.s = settings
        self.now = 0
        self.nodes: dict[str, _Node] = {}
        self.alive: dict[str, int] = {}  # node -> last beat, for nodes not lost or gone
        self.sessions: dict[str, _Session] = {}
        self.jobs: dict[str, _Job] = {}
        self.decisions: list[dict[str, str]] = []
        self.outputs: dict[str, list[dict[str, str]]] = {}
        self.dead: list[str] = []
        self.idle: dict[str, int] = {}  # session -> last activity, when expiry is on
        self.ended: dict[str, int] = {}  # finished job -> when
        self.capacity_changed = False

    # ------------------------------------------------------------ nodes

    @_entry
    def register(self, node_id: str, mc: int) -> None:
        old = self.nodes.get(node_id)
        node = _Node(mc=mc, hb=self.now)
        if old is not None:
            node.run, node.load, node.jobs = old.run, old.load, old.jobs
            node.unavailable_until = old.unavailable_until
            node.strikes, node.quarantined_until = old.strikes, old.quarantined_until
        self.nodes[node_id] = node
        self.alive[node_id] = self.now
        self._sync(node_id)  # (re)joins its pool afresh

    @_entry
    def heartbeat(self, node_id: str, load: tuple[int, int, int]) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            self.dead.append("unknown_node")
            return
        if self.now - node.hb > self.s.heartbeat_fresh_ms:
            self.capacity_changed = True  # pickable again after a silence
        if node.st == "lost":
            node.st = "drain" if node.drained else "up"
            node.drained = False
        node.hb, node.load = self.now, load
        if node.st != "gone":
            self.alive[node_id] = self.now
        self._sync(node_id)

    def _sync(self, node_id: str) -> None:
        """A node is in its pool while it is up and not overloaded; joining it may serve
        the queue."""
        node = self.nodes[node_id]
        wanted = node.st == "up" and not self._overloaded(node)
        if wanted and not node.in_pool:
            self.capacity_changed = True
        node.in_pool = wanted

    def _set_state(self, node_id: str, state: str) -> bool:
        if node_id not in self.nodes:
            self.dead.append("unknown_node")
            return False
        self.nodes[node_id].st = state
        self._sync(node_id)
        return True

    @_entry
    def drain(self, node_id: str) -> None:
        self._set_state(node_id, "drain")

    @_entry
    def deregister(self, node_id: str) -> None:
        if self._set_state(node_id, "gone"):
            self.alive.pop(node_id, None)
            self._move_jobs(node_id, "NODE_LEFT", "node_left")

    @_entry
    def tick(self) -> None:
        silent = sorted(
            (beat, node_id)
            for node_id, beat in self.alive.items()
            if beat < self.now - self.s.node_lost_ms
        )
        for _, node_id in silent[:16]:
            del self.alive[node_id]
            if self.nodes[node_id].st == "drain":
                self.nodes[node_id].drained = True
            self._set_state(node_id, "lost")
            self._decide(k="l", node=node_id)
            self._move_jobs(node_id, "NODE_LOST", "node_lost")
        late = sorted(
            (job.deadline, job_id)
            for job_id, job in self.jobs.items()
            if job.st == "run" and job.deadline < self.now
        )
        for _, job_id in late[:64]:
            job = self.jobs[job_id]
            attempt, node_id = job.att, job.node
            self._end_attempt(job_id, attempt, node_id, False, "TIMED_OUT")
            self._strike(node_id)
            self._retry_or_fail(job_id, attempt, node_id, "TIMED_OUT", "timed_out")
        over = sorted(
            (job.until, job_id) for job_id, job in self._waiting() if job.until < self.now
        )
        for _, job_id in over[:64]:
            self._give_up(job_id, "queue_timeout")
        if self._waiting():
            self._serve()
        if self.s.expire_after_ms:
            self._expire()

    # ------------------------------------------------------------ sessions

    @_entry
    def change_settings(self, changes: dict[str, int]) -> None:
        """A settings_changed event: in force from here on, unless it breaks the rule
        between settings (dead-lettered, nothing changes)."""
        try:
            self.s = self.s.changed(changes)
        except ValueError as exc:
            self.dead.append(f"settings_conflict: {exc}")
            return
        if "group_max_utterances" in changes:
            self.decisions.append({"k": "c"})

    @_entry
    def open(self, session_id: str) -> None:
        if session_id not in self.sessions:
            self.sessions[session_id] = _Session(self.s.rate_burst * 1000, self.now)
            self.outputs.setdefault(session_id, [])
            self._touch(session_id)

    @_entry
    def close(self, session_id: str) -> None:
        if session_id not in self.sessions:
            self.dead.append("unknown_session")
            return
        self.sessions[session_id].closed = True
        waiting = sorted(job.idx for _, job in self._waiting() if job.sid == session_id)
        for index in waiting:
            self._give_up(f"{session_id}:{index}", "session_closed")
        self._touch(session_id)

    def _strike(self, node_id: str) -> None:
        """Timeouts in a row quarantine a node (a black hole) for quarantine_ms."""
        if not self.s.quarantine_after_timeouts:
            return
        node = self.nodes[node_id]
        node.strikes += 1
        if node.strikes >= self.s.quarantine_after_timeouts:
            node.strikes, node.quarantined_until = 0, self.now + self.s.quarantine_ms
            self._decide(k="q", node=node_id, until=str(node.quarantined_until))

    def _touch(self, session_id: str) -> None:
        if self.s.expire_after_ms:
            self.idle[session_id] = self.now

    def _finished(self, job_id: str, session_id: str) -> None:
        if self.s.expire_after_ms:
            self.ended[job_id] = self.now
            self._touch(session_id)

    def _expire(self) -> None:
        """Finished jobs, then sessions, idle longer than expire_after_ms, 64 of each
        per tick, oldest first (ties by id, as a sorted set orders them)."""
        before = self.now - self.s.expire_after_ms
        for _, job_id in sorted((at, j) for j, at in self.ended.items() if at < before)[:64]:
            job = self.jobs.pop(job_id)
            del self.ended[job_id]
            if job.sid in self.sessions:  # remembered, so a repeat is still ignored
                self.sessions[job.sid].rejected.add(job.idx)
        for _, sid in sorted((at, s) for s, at in self.idle.items() if at < before)[:64]:
            if any(job.sid == sid for _, job in self._waiting()):
                self._touch(sid)  # not idle while something of it waits
                continue
            del self.idle[sid], self.sessions[sid]
            self.outputs[sid] = []
            self._decide(k="e", sid=sid)

    @_entry
    def finalize(self, session_id: str, index: int, cut: str) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            self._notice(session_id, index, "unknown_session")
            return
        job_id = f"{session_id}:{index}"
        if index <= session.top and (job_id in self.jobs or index in session.rejected):
            return  # a repeat; anything else below the top is a late utterance, served
        if session.closed:
            self._notice(session_id, index, "session_closed")
            return
        self._touch(session_id)
        elapsed = self.now - session.refilled_at
        tokens = min(self.s.rate_burst * 1000, session.tokens + elapsed * self.s.rate_per_s)
        session.top = max(session.top, index)
        if tokens < 1000:
            self._reject(session_id, index, cut, "rate_limited")
            return
        session.tokens, session.refilled_at = tokens - 1000, self.now
        job = _Job(session_id, index, cut)
        # first come, first served: behind others waiting, it waits too
        behind = self.s.queue_wait_ms > 0 and bool(self._waiting())
        why = "no_capacity" if behind else self._start_attempt(job_id, job, 1, "")
        if why is None:
            self.jobs[job_id] = job
            session.in_flight.add(index)
            return
        if why == "no_capacity":
            why = self._wait(job_id, job, 1, "", "")
            if why is None:
                self.jobs[job_id] = job
                session.in_flight.add(index)
                if behind:
                    self._serve()
                return
        self._reject(session_id, index, cut, why)

    @_entry
    def result(self, job_id: str, attempt: int, node_id: str, ok: bool, err: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            self.dead.append("unknown_job")
            return
        if node_id not in self.nodes:
            self.dead.append("unknown_node")
            return
        if attempt < job.att:
            return
        if node_id != job.node:
            self.dead.append("not_owner")
            return
        if attempt > job.att:
            self.dead.append("unknown_attempt")
            return
        if job.st != "run":
            return
        self.nodes[node_id].strikes = 0  # it answers
        self._end_attempt(job_id, attempt, node_id, ok, err)
        if not ok:
            if err == "MODEL_NOT_AVAILABLE" and self.s.unavailable_window_ms > 0:
                node = self.nodes[node_id]
                if node.unavailable_until <= self.now:
                    until = str(self.now + self.s.unavailable_window_ms)
                    self._decide(k="m", node=node_id, pair=PAIR, until=until)
                node.unavailable_until = self.now + self.s.unavailable_window_ms
            self._retry_or_fail(job_id, attempt, node_id, err, "retries_exhausted")
            return
        job.st = "done"
        self._finished(job_id, job.sid)
        self._decide(
            k="o", job=job_id, att=str(attempt), node=node_id, sid=job.sid, idx=str(job.idx)
        )
        self._settle(
            job.sid, job.idx, {"st": "ok", "reason": "", "err": "", "node": node_id}, job.cut
        )

    # ------------------------------------------------------------ the rules

    def _decide(self, **fields: str) -> None:
        self.decisions.append(fields)

    def _overloaded(self, node: _Node) -> bool:
        return any(value > limit for value, limit in zip(node.load, self._limits(), strict=True))

    def _eligible(self, node_id: str, exclude: str) -> bool:
        node = self.nodes[node_id]
        return (
            node.st == "up"
            and not self._overloaded(node)
            and node.run < node.mc
            and self.now - node.hb <= self.s.heartbeat_fresh_ms
            and node_id != exclude
            and self.now >= node.unavailable_until
            and self.now >= node.quarantined_until
        )

    def _limits(self) -> tuple[int, int, int]:
        return (self.s.cpu_max_pct, self.s.gpu_max_pct, self.s.mem_max_pct)

    def _start_attempt(
        self, job_id: str, job: _Job, attempt: int, exclude: str, queued: bool = False
    ) -> str | None:
        """None when placed, else why not. A job placed from the queue says its pair."""
        if not self.nodes:
            return "no_pool"  # the derived pool exists once a node has registered
        ranked = sorted(
            (node.run * FULL // node.mc, node_id) for node_id, node in self.nodes.items()
        )
        chosen = next((n for _, n in ranked if self._eligible(n, exclude)), None)
        if chosen is None:
            return "no_capacity"
        node = self.nodes[chosen]
        node.run += 1
        node.jobs.add(job_id)
        job.att, job.node, job.st = attempt, chosen, "run"
        job.deadline = self.now + self.s.job_timeout_ms
        dispatched = {"k": "d", "job": job_id, "att": str(attempt), "node": chosen}
        self._decide(
            **dispatched, sid=job.sid, idx=str(job.idx), **({"pair": PAIR} if queued else {})
        )
        return None

    def _end_attempt(self, job_id: str, attempt: int, node_id: str, ok: bool, err: str) -> None:
        node = self.nodes[node_id]
        node.run = max(0, node.run - 1)
        node.jobs.discard(job_id)
        self.capacity_changed = True
        self._decide(
            k="r", job=job_id, att=str(attempt), node=node_id, ok="1" if ok else "0", err=err
        )

    def _retry_or_fail(
        self, job_id: str, attempt: int, node_id: str, err: str, exhausted: str
    ) -> None:
        job = self.jobs[job_id]
        reason = exhausted
        if attempt < self.s.max_attempts:
            why = self._start_attempt(job_id, job, attempt + 1, node_id)
            if why is None:
                return
            if why == "no_capacity":
                why = self._wait(job_id, job, attempt + 1, node_id, err)
                if why is None:
                    return
            reason = why
        job.st = "failed"
        self._finished(job_id, job.sid)
        self._decide(
            k="f", job=job_id, att=str(attempt), node=node_id, sid=job.sid, idx=str(job.idx),
            reason=reason, err=err,
        )  # fmt: skip
        outcome = {"st": "failed", "reason": reason, "err": err, "node": node_id}
        self._settle(job.sid, job.idx, outcome, job.cut)

    # ------------------------------------------------------------ the queue

    def _waiting(self) -> list[tuple[str, _Job]]:
        """The waiting jobs in the order they are served: retries of jobs that started
        first, then first attempts, each oldest first (ties by job id)."""
        waiting = [(job_id, job) for job_id, job in self.jobs.items() if job.st == "wait"]
        return sorted(waiting, key=lambda item: (item[1].waits_for == 1, item[1].since, item[0]))

    def _wait(self, job_id: str, job: _Job, attempt: int, keep_off: str, err: str) -> str | None:
        """None when the job waits for a slot, else why it may not."""
        if self.s.queue_wait_ms == 0:
            return "no_capacity"
        if len(self._waiting()) >= self.s.queue_max:
            return "queue_full"
        job.st, job.waits_for, job.keep_off, job.last_err = "wait", attempt, keep_off, err
        job.since, job.until = self.now, self.now + self.s.queue_wait_ms
        self._touch(job.sid)
        self._decide(
            k="w", job=job_id, att=str(attempt), sid=job.sid, idx=str(job.idx), pair=PAIR,
            until=str(job.until),
        )  # fmt: skip
        return None

    def _give_up(self, job_id: str, reason: str) -> None:
        """A waiting job that gets no slot: a first attempt is rejected, a retry fails."""
        job = self.jobs[job_id]
        if job.waits_for == 1:
            del self.jobs[job_id]
            self._reject(job.sid, job.idx, job.cut, reason)
            return
        job.st = "failed"
        self._finished(job_id, job.sid)
        self._decide(
            k="f", job=job_id, att=str(job.att), node=job.node, sid=job.sid, idx=str(job.idx),
            reason=reason, err=job.last_err,
        )  # fmt: skip
        outcome = {"st": "failed", "reason": reason, "err": job.last_err, "node": job.node}
        self._settle(job.sid, job.idx, outcome, job.cut)

    def _serve(self) -> None:
        """The first waiting job that a node may take gets it, again and again: a wait
        that ended is given up; past a head that cannot be placed only retries kept off
        a node let the next ones be tried."""
        for _ in range(SERVE_MAX):
            outcome = None
            for job_id, job in self._waiting()[:QUEUE_LOOK]:
                if job.until < self.now:
                    self._give_up(job_id, "queue_timeout")
                    outcome = "ended"
                elif self._start_attempt(job_id, job, job.waits_for, job.keep_off, True) is None:
                    outcome = "placed"
                if outcome or not job.keep_off:
                    break
            if outcome is None:
                return

    def _move_jobs(self, node_id: str, err: str, exhausted: str) -> None:
        for job_id in sorted(self.nodes[node_id].jobs):
            attempt = self.jobs[job_id].att
            self._end_attempt(job_id, attempt, node_id, False, err)
            self._retry_or_fail(job_id, attempt, node_id, err, exhausted)

    def _reject(self, session_id: str, index: int, cut: str, reason: str) -> None:
        session = self.sessions[session_id]
        session.rejected.add(index)
        self._decide(k="x", sid=session_id, idx=str(index), reason=reason)
        session.in_flight.add(index)
        self._settle(
            session_id, index, {"st": "rejected", "reason": reason, "err": "", "node": ""}, cut
        )

    def _notice(self, session_id: str, index: int, reason: str) -> None:
        """A finalize that is no utterance of an open session: a dead letter for the
        operator, a notice in the session's output stream for the gateway."""
        self.dead.append(reason)
        self._decide(k="n", sid=session_id, idx=str(index), reason=reason)
        notice = {"st": "notice", "reason": reason, "err": "", "node": ""}
        self.outputs.setdefault(session_id, []).append({"idx": str(index), "grp": "0", **notice})

    def _settle(self, session_id: str, index: int, outcome: dict[str, str], cut: str) -> None:
        """Deliver in utterance order: held until every earlier finalized one ended."""
        session = self.sessions[session_id]
        session.held[index] = {**outcome, "cut": cut}
        while session.in_flight and min(session.in_flight) in session.held:
            first = min(session.in_flight)
            session.in_flight.remove(first)
            self._deliver(session_id, first, session.held.pop(first))

    def _deliver(self, session_id: str, index: int, outcome: dict[str, str]) -> None:
        session = self.sessions[session_id]
        gid, count, ended = session.group or (0, 0, True)
        if ended or count >= self.s.group_max_utterances:
            gid, count = gid + 1, 0
        session.group = (gid, count + 1, outcome["cut"] != "max_length")
        delivered = {k: v for k, v in outcome.items() if k != "cut"}
        self.outputs[session_id].append({"idx": str(index), "grp": str(gid), **delivered})
