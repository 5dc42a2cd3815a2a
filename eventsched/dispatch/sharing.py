"""Sharing a namespace's cells between workers (``eventsched worker --all-cells``).

Each such worker renews its membership of the namespace's workers (members.lua, by the
Redis clock) every ``beat_s`` and reads who else is in. From the same members and the
same cells, every worker computes the same assignment (``assign``) of each role of each
cell to one member, and contends only for its own roles; a role it holds that is now
another's it lets go (finishing the batch in hand), and the other takes it over as a
standby would. Leases stay what makes a role safe: two workers whose views differ for a
moment contend for a lease and one wins; a role nobody's view gives out waits at most a
membership's TTL, until the silent worker's membership ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from eventsched.model.keys import NamespaceKeys
from eventsched.store.client import RedisClient
from eventsched.store.scripts import register
from eventsched.store.streams import text

__all__ = ["Membership", "RoleId", "assign"]

RoleId = tuple[str, str]  # (cell, role)


def _rank(role: RoleId, worker: str) -> bytes:
    """The rendezvous weight of a worker for a role: the same in every process."""
    return hashlib.blake2b(f"{role[0]}/{role[1]}/{worker}".encode(), digest_size=8).digest()


def assign(roles: Iterable[RoleId], workers: Sequence[str]) -> dict[RoleId, str]:
    """Each role to one worker, balanced within one: every worker takes roles // workers
    of them, and the remainder one more each. Roles in order go to the first worker of
    their own rendezvous ranking that has room, so a worker joining or leaving moves few
    roles besides those it takes or leaves."""
    ordered = sorted(set(roles))
    members = sorted(set(workers))
    if not members:
        return {}
    share, extra = divmod(len(ordered), len(members))
    taken = dict.fromkeys(members, 0)
    chosen: dict[RoleId, str] = {}
    for role in ordered:
        for worker in sorted(members, key=lambda w: _rank(role, w), reverse=True):
            if taken[worker] < share or (taken[worker] == share and extra):
                extra -= taken[worker] == share
                taken[worker] += 1
                chosen[role] = worker
                break
    return chosen


class Membership:
    """One worker's membership of the namespace's shared workers."""

    def __init__(self, client: RedisClient, namespace: str, name: str, ttl_ms: int) -> None:
        self.key = NamespaceKeys(namespace).workers
        self.name = name
        self.ttl_ms = ttl_ms
        self._script = register(client, "members")

    async def renew(self) -> list[str]:
        """Stay in for another TTL; returns every member, sorted."""
        reply = await self._script(keys=[self.key], args=[self.name, self.ttl_ms])
        return sorted(text(member) for member in reply)

    async def leave(self) -> None:
        """Leave now, so the others share this worker's roles at their next beat."""
        await self._script(keys=[self.key], args=[self.name, 0])
