"""Role leases: one worker at a time holds each role of a cell (dispatch, groups,
ticker). A lease is a Redis string with a time to live, renewed by its holder; a
worker that dies loses it after the TTL and a standby takes over. The apply scripts
check the lease inside the same call (fencing), so a worker that lost its lease while
paused cannot apply a batch."""

from __future__ import annotations

import time

from eventsched.store.client import RedisClient
from eventsched.store.scripts import register

__all__ = ["Lease"]


class Lease:
    def __init__(self, client: RedisClient, key: str, holder: str, ttl_ms: int) -> None:
        if ttl_ms < 30:
            raise ValueError("a lease needs a TTL of at least 30 ms")
        self.key = key
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.held = False
        self._script = register(client, "lease")
        self._renew_after = 0.0  # monotonic seconds; renewing reads no decision input

    async def _call(self, action: str) -> bool:
        reply = await self._script(keys=[self.key], args=[self.holder, action, self.ttl_ms])
        self.held = int(reply) == 1
        if self.held:
            self._renew_after = time.monotonic() + self.ttl_ms / 3000
        return self.held

    async def keep(self) -> bool:
        """Renew the lease when a third of its TTL has passed, or try to acquire it;
        returns whether this worker holds it now."""
        if self.held:
            if time.monotonic() < self._renew_after:
                return True
            return await self._call("renew")
        return await self._call("acquire")

    async def release(self) -> None:
        if self.held:
            await self._call("release")
        self.held = False
