"""Every Redis key name eventsched uses, in one place.

All keys of a scheduling cell share the hash tag ``{cell}``, so every script runs on
one Redis Cluster slot. A namespace in front of the tag lets several deployments (or
test runs) share one Redis without touching each other's keys:

    es:{c0}:log            the cell's event log (stream)
    es:{c0}:node:n1        a node record (hash)           built inside Lua
    es:{c0}:inbox:n1       the node's job inbox (stream)  built inside Lua

Keys of one node or one session are built inside the Lua scripts from ``cell_prefix``
and the suffixes below; the scripts receive the prefix as ``ARGV[1]``. Any change here
must be mirrored by the suffix literals at the top of ``lua/apply.lua``; a test checks
that both agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "APPLY_KEYS",
    "CELL_PATTERN",
    "DEFAULT_CELL",
    "DEFAULT_NAMESPACE",
    "SUFFIXES",
    "CellKeys",
]

DEFAULT_NAMESPACE = "es"
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
    "utterances": "utt:",  # hash: utterance_index -> outcome of its finalize (idempotency)
    "in_flight": "infl:",  # sorted set: finalized, not yet delivered utterance indexes
    "held": "held:",  # hash per (session, index): an outcome waiting for earlier ones
    "output": "out:",  # stream: the session's ordered outcomes, ID 0-(index+1)
    "group": "grp:",  # hash: the session's current conversation group
    "job": "job:",  # hash: attempt, node, pool, state, deadline
}

# The fixed KEYS of apply.lua, in order. The script's header lists the same names.
APPLY_KEYS = ("log", "meta", "decisions", "dlq", "pools", "lang_index", "nodes")


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

    def apply_keys(self) -> list[str]:
        return [getattr(self, name) for name in APPLY_KEYS]

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

    def group(self, session_id: str) -> str:
        return self.prefix + SUFFIXES["group"] + session_id

    def job(self, job_id: str) -> str:
        return self.prefix + SUFFIXES["job"] + job_id

    @property
    def all_pattern(self) -> str:
        """A SCAN pattern matching every key of the cell."""
        return f"{self.namespace}:{{{self.cell}}}:*"
