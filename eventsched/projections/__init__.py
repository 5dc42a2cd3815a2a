"""Reading the projections apply.lua maintains: the snapshot and the group state."""

from .groups import GroupView, Outcome, SessionView, read_outcomes, read_session
from .snapshot import NodeView, PoolView, Snapshot, read_node, read_snapshot

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
