"""eventsched: a job scheduler for real-time speech translation, as an event log on
Redis Streams.

What nodes and gateways import is here; the layers are subpackages, lowest first:
``model``, ``store``, ``projections``, then ``dispatch`` and ``clients`` side by side,
``ops``, ``sim``. The ``eventsched`` command is ``eventsched.cli`` (the repository's
``cli/`` folder). pyproject.toml's import-linter contracts check the order.
"""

from eventsched.clients.node import Job, JobFailed, JobOutput, Node
from eventsched.clients.policy import FinalizePolicy
from eventsched.clients.session import Session, SessionClient
from eventsched.model.events import Services, StageTimings
from eventsched.model.keys import CellKeys
from eventsched.model.principals import Principal
from eventsched.projections.groups import Outcome
from eventsched.store.client import Store, connect, principal_of

__all__ = [
    "CellKeys",
    "FinalizePolicy",
    "Job",
    "JobFailed",
    "JobOutput",
    "Node",
    "Outcome",
    "Principal",
    "Services",
    "Session",
    "SessionClient",
    "StageTimings",
    "Store",
    "connect",
    "principal_of",
]
