"""Who may say what: principals, their Redis user names, and the identity rules.

A confined principal (a GPU node, a gateway) writes only to its own ingress stream; the
dispatch worker stamps each entry it admits with where it came from (``by``), and the
rules here decide, from that alone, whether the event is the principal's to send. What
an event says about who sent it is never believed.

User names carry the principal, so a URL is all a client needs:

    es~c0~node~gpu-7       node gpu-7 of cell c0 in namespace es
    es~c0~gateway~eu1      gateway eu1 of cell c0
    es~worker~w1           a worker of every cell of namespace es
    es~operator~ann        an operator (es~operator-ro~bob: reads only)

``~`` appears in no namespace, cell or name, and needs no escaping in a URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import ValidationError

from eventsched.model.events import (
    ENTRY_FIELD,
    SOURCE_FIELD,
    Event,
    JobResult,
    NodeDeregistered,
    NodeDraining,
    NodeHeartbeat,
    NodeRegistered,
    NodeUndrained,
    SessionClosed,
    SessionOpened,
    UtteranceFinalized,
    decode_event,
)

__all__ = [
    "CELL_ROLES",
    "GATEWAY_PATTERN",
    "NAMESPACE_ROLES",
    "Principal",
    "lawful_event",
    "refusal",
    "session_prefix",
]

CellRole = Literal["node", "gateway"]
CELL_ROLES: Final = ("node", "gateway")  # confined to one cell, writing through ingress
NAMESPACE_ROLES: Final = ("worker", "operator", "operator-ro")  # trusted, every cell
# A gateway's sessions are named "<gateway>.<anything>", so a key pattern can give it
# the outputs of its own sessions and nothing else: no dot in the gateway's name.
GATEWAY_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NODE_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SEP = "~"


@dataclass(frozen=True)
class Principal:
    """A node or a gateway of one cell: the source of everything its ingress holds."""

    namespace: str
    cell: str
    role: CellRole
    name: str

    def __post_init__(self) -> None:
        pattern = _NODE_PATTERN if self.role == "node" else GATEWAY_PATTERN
        if self.role not in CELL_ROLES or not pattern.match(self.name):
            raise ValueError(f"invalid {self.role} name {self.name!r}")

    @property
    def source(self) -> str:
        """The ingress stream's suffix and the ``by`` stamp: ``node:gpu-7``."""
        return f"{self.role}:{self.name}"

    @property
    def username(self) -> str:
        return _SEP.join((self.namespace, self.cell, self.role, self.name))

    @classmethod
    def from_username(cls, username: str | None) -> Principal | None:
        """The principal a Redis user name stands for; None for any other user."""
        parts = (username or "").split(_SEP)
        if len(parts) != 4 or parts[2] not in CELL_ROLES:
            return None
        namespace, cell, role, name = parts
        try:
            return cls(namespace, cell, "node" if role == "node" else "gateway", name)
        except ValueError:
            return None

    @classmethod
    def from_source(cls, namespace: str, cell: str, source: str) -> Principal | None:
        role, _, name = source.partition(":")
        return cls.from_username(_SEP.join((namespace, cell, role, name)))


def session_prefix(gateway: str) -> str:
    """What the IDs of a gateway's sessions start with."""
    return gateway + "."


def refusal(source: str, event: Event) -> str | None:
    """Why the principal ``source`` (``node:n1``, ``gateway:g1``) may not send
    ``event``; None when it may. A node speaks for itself only; a gateway opens,
    finalizes and closes its own sessions only; neither sends ticks, pools or settings."""
    role, _, name = source.partition(":")
    match event:
        case (
            NodeRegistered()
            | NodeHeartbeat()
            | NodeDraining()
            | NodeUndrained()
            | NodeDeregistered()
            | JobResult()
        ):
            claimed = event.node_id
        case SessionOpened() | UtteranceFinalized() | SessionClosed():
            if role != "gateway":
                return f"identity_mismatch: {source} sent {event.type}"
            if not event.session_id.startswith(session_prefix(name)):
                return f"not_owner: session {event.session_id} is not gateway {name}'s"
            return None
        case _:
            return f"identity_mismatch: {source} sent {event.type}"
    if role != "node":
        return f"identity_mismatch: {source} sent {event.type}"
    if claimed != name:
        return f"identity_mismatch: {source} sent {event.type} for node {claimed}"
    return None


def lawful_event(fields: Mapping[str, str]) -> Event | None:
    """The event a log entry holds, if it holds a valid one that its source (when it
    came through an ingress) may send: what applying it acts on. None for an entry the
    applier dead-letters, for readers of the log (audit, verify, replay, inspection)."""
    raw = fields.get(ENTRY_FIELD)
    if raw is None or set(fields) - {ENTRY_FIELD, SOURCE_FIELD}:
        return None
    try:
        event = decode_event(raw)
    except ValidationError:
        return None
    source = fields.get(SOURCE_FIELD)
    return event if source is None or refusal(source, event) is None else None
