"""Every Redis key name eventsched uses, in one place.

All keys of a scheduling cell share the hash tag ``{cell}``, so every script runs on
one Redis Cluster slot. A namespace in front of the tag lets several deployments (or
test runs) share one Redis without touching each other's keys:

    es:{c0}:log            the cell's event log (stream)
    es:{c0}:node:n1        a node record (hash)           built inside Lua
    es:{c0}:inbox:n1       the node's job inbox (stream)  built inside Lua
    es:{c0}:in:node:n1     a confined principal's ingress (stream; model.principals)

Keys of one node or one session are built inside the Lua scripts from ``cell_prefix``
and the suffixes below; the scripts receive the prefix as ``ARGV[1]``. Any change here
must be mirrored by the suffix literals at the top of ``lua/apply.lua``; a test checks
that both agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "APPLIER_GROUP",
    "APPLY_KEYS",
    "CELL_PATTERN",
    "CLAIM_KEYS",
    "DEFAULT_CELL",
    "DEFAULT_NAMESPACE",
    "GROUPS_GROUP",
    "GROUPS_KEYS",
    "INBOX_GROUP",
    "LEASE_KEYS",
    "MEMBERS_KEYS",
    "PROJECTIONS",
    "RECORDS_KEYS",
    "REQUEUE_KEYS",
    "ROLES",
    "SCRIPT_KEYS",
    "STATE_KEYS",
    "SUFFIXES",
    "CellKeys",
    "NamespaceKeys",
]

DEFAULT_NAMESPACE = "es"
# The two projections, each with its own consumer group, marker and lease: "dispatch"
# folds the log into the snapshot and decides; "groups" folds the decisions stream into
# per-session group state and ordered outputs.
PROJECTIONS = ("dispatch", "groups")
ROLES = (*PROJECTIONS, "ticker")  # each held by one worker per cell, under its lease
INBOX_GROUP = "node"  # the consumer group a node reads its inbox through (apply.lua too)
APPLIER_GROUP = "applier"  # the dispatch projection's consumer group on the log
GROUPS_GROUP = "groups"  # the group-state projection's on the decisions stream (apply.lua too)
DEFAULT_CELL = "c0"
CELL_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Suffixes of keys built per node, session or job inside the scripts.
SUFFIXES = {
    "node": "node:",  # hash: max concurrency, running, heartbeat, state, pairs, pools
    "inbox": "inbox:",  # stream: jobs handed to the node
    "node_jobs": "njobs:",  # set: job ids running on the node
    "pool": "pool:",  # sorted set: eligible members of a pool, scored by load
    "session": "sess:",  # hash: languages, preferred pool, rate bucket, closed
    "utterances": "utt:",  # hash: utterance_index -> "rejected" or "ended" (for repeats)
    "in_flight": "infl:",  # sorted set: finalized, not yet delivered utterance indexes
    "held": "held:",  # hash per (session, index): an outcome waiting for earlier ones
    "output": "out:",  # stream: the session's ordered outcomes, ID 0-(index+1)
    "group": "grp:",  # hash: the session's current conversation group
    "job": "job:",  # hash: attempt, node, pool, state, deadline
    "ingress": "in:",  # stream: what one confined principal sends (CellKeys.ingress)
    "queue": "q:",  # sorted set per language pair: waiting job id -> class and since when
    "queue_session": "qs:",  # sorted set: the session's waiting utterance indexes
}

# The fixed KEYS of each script, in order; each script's header lists the same names.
APPLY_KEYS = (
    "log",
    "meta",
    "decisions",
    "dlq",
    "pools",
    "lang_index",
    "nodes",
    "deadlines",
    "alive",
    "dispatch_lease",
    "idle",
    "ended",
    "settings",
    "queued",
    "waits",
    "stats",
    "groups_lease",
)
GROUPS_KEYS = ("decisions", "meta", "groups_lease")
CLAIM_KEYS = ("stream", "dlq", "lease", "meta")
LEASE_KEYS = ("lease",)
REQUEUE_KEYS = ("dlq", "log", "requeued")
STATE_KEYS = ("meta", "decisions")
RECORDS_KEYS = ("nodes",)
MEMBERS_KEYS = ("workers",)
SCRIPT_KEYS = {
    "members": MEMBERS_KEYS,
    "apply": APPLY_KEYS,
    "groups": GROUPS_KEYS,
    "claim": CLAIM_KEYS,
    "lease": LEASE_KEYS,
    "requeue": REQUEUE_KEYS,
    "state": STATE_KEYS,
    "records": RECORDS_KEYS,
}


@dataclass(frozen=True)
class NamespaceKeys:
    """The few keys of a namespace that belong to no cell, each in a slot of its own
    and touched alone (never beside a cell's key in one command or script)."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not _NAMESPACE_PATTERN.match(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}")

    @property
    def workers(self) -> str:
        """Sorted set: the ``--all-cells`` workers sharing the cells' roles, each scored
        by the Redis time (ms) its membership ends unless renewed (dispatch.sharing)."""
        return f"{self.namespace}:workers"

    @property
    def directory(self) -> str:
        """Hash: cell -> what it offers (JSON: nodes, sessions, pairs served, when), the
        cell directory gateways and nodes choose a cell from (projections.directory)."""
        return f"{self.namespace}:cells"


@dataclass(frozen=True)
class CellKeys:
    """Key names of one cell within one namespace."""

    cell: str = DEFAULT_CELL
    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not CELL_PATTERN.match(self.cell):
            raise ValueError(f"invalid cell name {self.cell!r}: use [a-z0-9_-], at most 32")
        if not _NAMESPACE_PATTERN.match(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}")

    @property
    def prefix(self) -> str:
        """What every key of the cell starts with, hash tag included."""
        return f"{self.namespace}:{{{self.cell}}}:"

    @property
    def log(self) -> str:
        return self.prefix + "log"

    @property
    def meta(self) -> str:
        """Hash: the tracking marker (last applied log ID) and the pool mode."""
        return self.prefix + "meta"

    @property
    def decisions(self) -> str:
        """Stream: every dispatch, rejection, release, retry and failure, in log order."""
        return self.prefix + "decisions"

    @property
    def dlq(self) -> str:
        return self.prefix + "dlq"

    @property
    def pools(self) -> str:
        """Hash: pool name -> "order|lang,lang,..."."""
        return self.prefix + "pools"

    @property
    def lang_index(self) -> str:
        """Hash: "src>tgt" -> comma-separated candidate pools in fallback order."""
        return self.prefix + "langidx"

    @property
    def nodes(self) -> str:
        """Sorted set (all scores 0, so ordered by id): every node ever registered."""
        return self.prefix + "nodes"

    @property
    def settings(self) -> str:
        """Hash: the decision settings the log changed (settings_changed), each by name,
        and ``since``, the log ID of the latest change; the others have their defaults."""
        return self.prefix + "settings"

    @property
    def queued(self) -> str:
        """Hash: language pair -> how many jobs wait in its queue for a slot."""
        return self.prefix + "queued"

    @property
    def waits(self) -> str:
        """Sorted set: waiting job id -> when its wait ends (event time ms)."""
        return self.prefix + "waits"

    def queue(self, pair: str) -> str:
        """Sorted set: the jobs waiting for a slot of the pair ``src>tgt``."""
        return self.prefix + SUFFIXES["queue"] + pair

    @property
    def checkpoints(self) -> str:
        """Hash: log position -> the projections there (JSON), kept for trimmed logs."""
        return self.prefix + "checkpoints"

    @property
    def stats(self) -> str:
        """Hash: the statistics snapshot of the last window (JSON)."""
        return self.prefix + "stats"

    @property
    def requeued(self) -> str:
        """Hash: dead-letter ID -> the log ID it was requeued as (operator bookkeeping:
        the dead letter stays, as a rebuild of the log makes it again)."""
        return self.prefix + "requeued"

    @property
    def trims(self) -> str:
        """Hash: stream -> the ID below which retention trimmed it."""
        return self.prefix + "trims"

    @property
    def deadlines(self) -> str:
        """Sorted set: running job id -> deadline (event time ms)."""
        return self.prefix + "deadlines"

    @property
    def alive(self) -> str:
        """Sorted set: node id -> last heartbeat (event time ms), for nodes not lost."""
        return self.prefix + "alive"

    @property
    def idle(self) -> str:
        """Sorted set: session id -> its last activity (event time ms), for expiry."""
        return self.prefix + "idle"

    @property
    def ended(self) -> str:
        """Sorted set: finished job id -> when it finished (event time ms), for expiry."""
        return self.prefix + "ended"

    def ingress(self, source: str) -> str:
        """Stream: what a confined principal (``node:n1``, ``gateway:g1``) sends; only
        it may append here, and only the dispatch worker reads it."""
        return self.prefix + SUFFIXES["ingress"] + source

    @property
    def bell(self) -> str:
        """Pub/sub channel: a principal names its ingress here after appending, so
        the worker reads the streams that have something rather than all of them."""
        return self.prefix + "bell"

    @property
    def principals(self) -> str:
        """Sorted set (scores 0): the ingress sources ``eventsched acl`` created, which
        the worker sweeps after a restart for what no bell announced."""
        return self.prefix + "principals"

    def lease(self, role: str) -> str:
        """String: the worker holding a role of the cell (dispatch, groups, ticker)."""
        return f"{self.prefix}lease:{role}"

    @property
    def dispatch_lease(self) -> str:
        return self.lease("dispatch")

    @property
    def groups_lease(self) -> str:
        return self.lease("groups")

    def script_keys(self, script: str) -> list[str]:
        return list(_script_keys(self, script))

    def apply_keys(self) -> list[str]:
        return self.script_keys("apply")

    def node(self, node_id: str) -> str:
        return self.prefix + SUFFIXES["node"] + node_id

    def inbox(self, node_id: str) -> str:
        return self.prefix + SUFFIXES["inbox"] + node_id

    def node_jobs(self, node_id: str) -> str:
        return self.prefix + SUFFIXES["node_jobs"] + node_id

    def pool(self, name: str) -> str:
        return self.prefix + SUFFIXES["pool"] + name

    def session(self, session_id: str) -> str:
        return self.prefix + SUFFIXES["session"] + session_id

    def utterances(self, session_id: str) -> str:
        return self.prefix + SUFFIXES["utterances"] + session_id

    def in_flight(self, session_id: str) -> str:
        return self.prefix + SUFFIXES["in_flight"] + session_id

    def held(self, session_id: str, utterance_index: int) -> str:
        return f"{self.prefix}{SUFFIXES['held']}{session_id}:{utterance_index}"

    def output(self, session_id: str) -> str:
        return self.prefix + SUFFIXES["output"] + session_id

    def wake(self, reader: str) -> str:
        """Stream: a session client's own, which it rings when a session needs reading
        that its blocking read does not cover. In the cell's slot (read in one XREAD
        with the outputs) but outside its pattern: no projection, never in its state."""
        return f"{self.namespace}:wake:{{{self.cell}}}:{reader}"

    def group(self, session_id: str) -> str:
        return self.prefix + SUFFIXES["group"] + session_id

    def job(self, job_id: str) -> str:
        return self.prefix + SUFFIXES["job"] + job_id

    @property
    def all_pattern(self) -> str:
        """A SCAN pattern matching every key of the cell."""
        return f"{self.namespace}:{{{self.cell}}}:*"


@lru_cache(maxsize=1024)
def _script_keys(keys: CellKeys, script: str) -> tuple[str, ...]:
    # Built once per cell: the producer's every call names them (7 us each time).
    return tuple(getattr(keys, name) for name in SCRIPT_KEYS[script])
