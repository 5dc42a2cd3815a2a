"""The real applier against tests/model.py, on fakeredis and on the real Redis: random
interleavings of node, session, result and time events, each applied through the
worker's code, and after every step the decisions, the sessions' outputs, the nodes and
the dead letters compared with the model's. Each run ends with verify."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from eventsched.model.events import (
    Event,
    NodeDeregistered,
    NodeDraining,
    NodeHeartbeat,
    SessionClosed,
    SettingsChanged,
    Tick,
    UtteranceFinalized,
)
from eventsched.model.keys import CellKeys
from eventsched.model.settings import DEFAULTS, DecisionSettings
from eventsched.ops.verify import verify_cell
from eventsched.store.client import Store, unlink_matching
from tests.conftest import new_namespace
from tests.harness import Cell, error, node, ok, session
from tests.model import CellModel

T = TypeVar("T")

SETTINGS = DecisionSettings(
    rate_per_s=2,
    rate_burst=2,
    max_attempts=2,
    job_timeout_ms=3000,
    heartbeat_fresh_ms=2500,
    node_lost_ms=4000,
    unavailable_window_ms=2000,
    group_max_utterances=3,
    expire_after_ms=16_000,  # the least these attempts allow: sessions do expire in a run
    quarantine_after_timeouts=1,
    quarantine_ms=5000,
    queue_wait_ms=1000,
    queue_max=2,  # two nodes of 1-3 slots: the queue fills up too
)
# Settings a run changes, three values each; with expire_after_ms 16,000, a job_timeout_ms
# of 7,000, a max_attempts of 3 or a queue_wait_ms of 2,000 breaks the rule between
# settings (with the others as set above).
CHANGES = {
    "rate_burst": (1, 2, 4),
    "rate_per_s": (1, 2, 5),
    "job_timeout_ms": (1000, 3000, 7000),
    "max_attempts": (1, 2, 3),
    "group_max_utterances": (1, 3, 5),
    "queue_wait_ms": (0, 1000, 2000),
    "queue_max": (0, 1, 2),
}
# Around the freshness, lost and deadline bounds, and past the expiry.
SILENCES = [1, 100, 500, 999, 1000, 1001, 2500, 2501, 3000, 3001, 4000, 4001, 6000, 16_001]
NODES = ("n1", "n2")
SESSIONS = ("s1", "s2")
PROJECTED = ("k", "job", "sid", "idx", "att", "node", "reason", "err", "ok", "pair", "until")
OUTPUT = ("idx", "grp", "st", "reason", "err", "node")


class CellMachine(RuleBasedStateMachine):
    store_url = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = Store(self.store_url).client()
        self.cell = Cell(self.client, CellKeys("c0", new_namespace()))
        self.model = CellModel(DEFAULTS)
        self.model.now = self.cell.now_ms
        self.change_settings(SETTINGS.differences())
        self.registered: set[str] = set()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def _step(self, *events: Event) -> None:
        self._run(self.cell.step(*events))
        self._compare()

    # ---------------------------------------------------------------- nodes

    @rule(node_id=st.sampled_from(NODES), capacity=st.integers(1, 3))
    def register(self, node_id: str, capacity: int) -> None:
        self.model.register(node_id, capacity)
        self.registered.add(node_id)
        self._step(node(node_id, max_concurrency=capacity))

    @rule(node_id=st.sampled_from(NODES), overloaded=st.booleans())
    def heartbeat(self, node_id: str, overloaded: bool) -> None:
        cpu = 99 if overloaded else 20
        self.model.heartbeat(node_id, (cpu, 10, 10))
        self._step(NodeHeartbeat(node_id=node_id, cpu_pct=cpu, gpu_pct=10, mem_pct=10))

    @rule(node_id=st.sampled_from(NODES))
    def drain(self, node_id: str) -> None:
        self.model.drain(node_id)
        self._step(NodeDraining(node_id=node_id))

    @rule(node_id=st.sampled_from(NODES))
    def deregister(self, node_id: str) -> None:
        self.model.deregister(node_id)
        self._step(NodeDeregistered(node_id=node_id))

    @rule(ms=st.sampled_from(SILENCES))
    def time_passes(self, ms: int) -> None:
        """Includes silence long enough to lose nodes, pass deadlines, and expire
        finished jobs and idle sessions."""
        self.cell.advance(ms)
        self.model.now = self.cell.now_ms
        self.model.tick()
        self._step(Tick())

    @precondition(lambda self: bool(self.registered) and bool(self.model.sessions))
    @rule(data=st.data())
    def busy(self, data: st.DataObject) -> None:
        """Every registered node beats, then a session speaks: work gets dispatched
        often enough for results, timeouts and quarantines to happen."""
        for node_id in sorted(self.registered):
            self.heartbeat(node_id, overloaded=False)
        session_id = data.draw(st.sampled_from(sorted(self.model.sessions)))
        self.finalize(session_id, 0, "pause")

    @rule(node_id=st.sampled_from(NODES))
    def flaps(self, node_id: str) -> None:
        """Every node silent until lost, then this one beats again."""
        self.time_passes(SETTINGS.node_lost_ms + 1)
        self.heartbeat(node_id, overloaded=False)

    @rule(
        changes=st.dictionaries(
            st.sampled_from(sorted(CHANGES)),
            st.integers(),
            min_size=1,
            max_size=2,
        ).map(lambda drawn: {name: CHANGES[name][value % 3] for name, value in drawn.items()})
    )
    def change_settings(self, changes: dict[str, int]) -> None:
        """Some changes break the rule between settings (an expiry shorter than the
        attempts allow) and are dead-lettered."""
        self.model.change_settings(changes)
        self._run(self.cell.append(SettingsChanged(settings=changes)))
        self._run(self.cell.apply())
        self._compare()

    # ---------------------------------------------------------------- sessions

    @rule(session_id=st.sampled_from(SESSIONS))
    def open(self, session_id: str) -> None:
        self.model.open(session_id)
        self._step(session(session_id))

    @rule(session_id=st.sampled_from(SESSIONS))
    def close(self, session_id: str) -> None:
        self.model.close(session_id)
        self._step(SessionClosed(session_id=session_id))

    @rule(
        session_id=st.sampled_from(SESSIONS),
        back=st.sampled_from([0, 0, 0, 1, 2]),  # mostly the next index; sometimes a repeat
        cut=st.sampled_from(["pause", "max_length", "client"]),
    )
    def finalize(self, session_id: str, back: int, cut: str) -> None:
        known = self.model.sessions.get(session_id)
        index = max(0, (known.top if known else -1) + 1 - back)
        self.model.finalize(session_id, index, cut)
        self._step(
            UtteranceFinalized(
                session_id=session_id,
                utterance_index=index,
                reason=cut,  # type: ignore[arg-type]
                audio_ref=f"a/{index}",
                duration_ms=500,
            )
        )

    # ---------------------------------------------------------------- results

    @precondition(lambda self: any(job.att for job in self.model.jobs.values()))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["ok", "ok", "error", "stale", "future", "not_owner", "unknown_node"]),
    )
    def result(self, data: st.DataObject, kind: str) -> None:
        """For a job that started (a first attempt still waiting has nothing to answer)."""
        started = sorted(job_id for job_id, job in self.model.jobs.items() if job.att)
        job_id = data.draw(st.sampled_from(started))
        job = self.model.jobs[job_id]
        attempt, node_id = job.att, job.node
        if kind == "stale":
            attempt = max(1, attempt - 1)
        elif kind == "future":
            attempt += data.draw(st.integers(1, 3))
        elif kind == "not_owner":
            node_id = data.draw(st.sampled_from([n for n in NODES if n != job.node]))
        elif kind == "unknown_node":
            node_id = "ghost"
        if kind == "error":
            self.model.result(job_id, attempt, node_id, False, "MODEL_NOT_AVAILABLE")
            self._step(error(job_id, attempt, node_id))
        else:
            self.model.result(job_id, attempt, node_id, True, "")
            self._step(ok(job_id, attempt, node_id))

    # ---------------------------------------------------------------- comparison

    def _compare(self) -> None:
        cell, model = self.cell, self.model
        decisions = self._run(cell.decisions())
        found = [{k: d[k] for k in PROJECTED if k in d} for d in decisions]
        assert found == model.decisions
        for session_id, expected in model.outputs.items():
            outputs = self._run(cell.outputs(session_id))
            assert [{k: o.get(k, "") for k in OUTPUT} for o in outputs] == expected, session_id
        for node_id, expected_node in model.nodes.items():
            record = self._run(cell.hash(cell.keys.node(node_id)))
            found_node = (record["st"], int(record["run"]), int(record["mc"]))
            assert found_node == (expected_node.st, expected_node.run, expected_node.mc), node_id
        assert [letter["reason"] for letter in self._run(cell.dlq())] == model.dead

    def teardown(self) -> None:
        try:
            report = self._run(verify_cell(self.client, self.cell.keys))
            assert report.ok, report.problems
        finally:
            self._run(unlink_matching(self.client, f"{self.cell.keys.namespace}:*"))
            self._run(self.client.aclose())
            self.loop.close()


@pytest.mark.timeout(900)  # a failing run shrinks its example, replaying every step
def test_the_applier_follows_the_model(store_url: str) -> None:
    class Machine(CellMachine):
        pass

    Machine.store_url = store_url
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=50,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        ),
    )
