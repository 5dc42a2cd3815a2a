"""The read side: decoding the projections the scripts maintain (the snapshot, the
group state), the statistics projection, and a cell's whole state read at one point
of its log with its one canonical text, which replay, verify and checkpoints share.

Layer 3. May import ``model`` and ``store``; knows nothing of who writes the
projections.
"""

from eventsched.projections.groups import (
    GroupView,
    Outcome,
    SessionView,
    read_outcomes,
    read_session,
)
from eventsched.projections.snapshot import NodeView, PoolView, Snapshot, read_node, read_snapshot

__all__ = [
    "GroupView",
    "NodeView",
    "Outcome",
    "PoolView",
    "SessionView",
    "Snapshot",
    "read_node",
    "read_outcomes",
    "read_session",
    "read_snapshot",
]
