"""The trust boundary's door: taking entries from confined principals' ingress streams.

A node or a gateway with its own Redis user (``eventsched acl``) may append only to its
own ingress stream, and rings the cell's bell (a pub/sub channel) with its name after
each append. The dispatch role's holder listens to the bell and reads only the streams
that rang, up to ``PER_STREAM`` entries of each per read, so a principal flooding its
ingress cannot hold the others back by more than one read, and 10,000 quiet nodes cost
nothing. A bell can be missed (the worker was down, its subscription broke): after taking
the role, and every ``SWEEP_S``, it reads every stream ``eventsched acl`` registered.
``Applier.admit`` then appends what it took to the log and applies it in one call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import anyio
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from eventsched.dispatch.applier import Taken
from eventsched.model.keys import CellKeys
from eventsched.model.principals import Principal
from eventsched.store.client import RedisClient
from eventsched.store.streams import parse_id, text, xread_raw

__all__ = ["MAX_ACTIVE", "PER_STREAM", "STREAMS_PER_READ", "SWEEP_S", "Bells", "Ingress"]

log = logging.getLogger("eventsched.worker")

PER_STREAM = 16  # entries of one stream per read: the most one principal gets ahead
STREAMS_PER_READ = 512  # streams named in one XREAD
SWEEP_S = 10.0  # how often every registered stream is read, for bells that were missed
MAX_ACTIVE = 100_000  # streams remembered as rung; a forged flood of names stops here
_PAGE = 1000


class Ingress:
    """The ingress streams of one cell, as its dispatch role's holder reads them."""

    def __init__(self, client: RedisClient, keys: CellKeys) -> None:
        self.client = client
        self.keys = keys
        # Sources that may have entries, oldest first, each with how often it rang: a
        # stream read empty leaves only if it did not ring again meanwhile.
        self._active: dict[str, int] = {}
        self._woken = anyio.Event()
        self.sweep_at = 0.0  # anyio time of the next sweep; 0: at once

    def ring(self, source: str) -> None:
        """A bell: ``source`` says its ingress has something."""
        if source in self._active:
            self._active[source] += 1
        elif len(self._active) < MAX_ACTIVE:
            if Principal.from_source(self.keys.namespace, self.keys.cell, source) is None:
                return  # no principal's name: nothing to read
            self._active[source] = 1
        self._woken.set()

    def missed(self) -> None:
        """Bells may have gone unheard: sweep at once."""
        self.sweep_at = 0.0
        self._woken.set()

    async def wait(self) -> None:
        """Until a bell rings or a sweep is due (the rung streams are kept above, so a
        bell between the wake and the next wait is not lost)."""
        if self._active or anyio.current_time() >= self.sweep_at:
            return
        with anyio.move_on_after(self.sweep_at - anyio.current_time()):
            await self._woken.wait()
        self._woken = anyio.Event()

    async def _sweep(self) -> None:
        """Every registered source counts as rung once."""
        self.sweep_at = anyio.current_time() + SWEEP_S
        cursor = 0
        while True:
            end = cursor + _PAGE - 1
            page = cast(list[bytes], await self.client.zrange(self.keys.principals, cursor, end))
            for raw in page:
                self.ring(text(raw))
            if len(page) < _PAGE:
                return
            cursor += _PAGE

    async def take(self) -> list[Taken]:
        """One read of the streams that rang (a sweep first when one is due)."""
        if anyio.current_time() >= self.sweep_at:
            await self._sweep()
        sources = list(self._active.items())[:STREAMS_PER_READ]
        if not sources:
            return []
        cursors = {self.keys.ingress(source): "0-0" for source, _ in sources}
        reply = await xread_raw(self.client, cursors, None, PER_STREAM)
        found = {text(stream): entries for stream, entries in reply}
        taken: list[Taken] = []
        for source, rung in sources:
            entries = found.get(self.keys.ingress(source), [])
            taken += [(source, entry_id, fields) for entry_id, fields in entries]
            if len(entries) == PER_STREAM:  # more waiting: to the back of the line
                del self._active[source]
                self._active[source] = rung
            elif self._active.get(source) == rung:  # read dry and did not ring since
                del self._active[source]
        # In the order the server's clock gave them (each stream's own order kept): a
        # node registered before a finalize arrived is registered when it is decided.
        return sorted(taken, key=lambda entry: parse_id(text(entry[1])))


class Bells:
    """One pub/sub subscription per worker to the bells of all its cells."""

    def __init__(self, client: RedisClient, cells: Sequence[Ingress]) -> None:
        self.client = client
        self.by_channel = {cell.keys.bell: cell for cell in cells}

    async def listen(self) -> None:
        """Hand each bell to its cell, until cancelled; after a broken subscription
        every cell sweeps, since bells rung meanwhile are gone."""
        while True:
            pubsub: PubSub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self.by_channel)
                for cell in self.by_channel.values():
                    cell.missed()
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message["type"] == "message":
                        self.by_channel[text(message["channel"])].ring(text(message["data"]))
            except (RedisError, OSError) as exc:
                log.warning("bells: subscription lost (%s); listening again", exc)
                await anyio.sleep(0.5)
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
