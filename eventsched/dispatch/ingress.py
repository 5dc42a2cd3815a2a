"""The trust boundary's door: taking entries from confined principals' ingress streams.

A node or a gateway with its own Redis user (``eventsched acl``) may append only to its
own ingress stream, and rings the cell's bell (a pub/sub channel) with its name after
each append. The dispatch role's holder listens to the bell and reads only the streams
that rang, up to ``PER_STREAM`` entries of each per read, so a principal flooding its
ingress cannot hold the others back by more than one read, and 10,000 quiet nodes cost
nothing. A bell can be missed (the worker was down, its subscription broke): after taking
the role, and every ``SWEEP_S``, it reads every stream ``eventsched acl`` registered.

A bell costs a round trip a trusted append does not (wake, then read); so the
``HOT_STREAMS`` streams most recently read (the gateways', busy nodes') are also held in
one blocking XREAD from the last entry seen in each, which wakes with their next entries
in hand, and their bells are ignored while it does. ``Applier.admit`` then appends what
was taken to the log and applies it in one call; an entry taken twice (by both reads) is
admitted once.
"""

from __future__ import annotations

import itertools
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

__all__ = [
    "HOT_BLOCK_MS",
    "HOT_STREAMS",
    "MAX_ACTIVE",
    "PER_STREAM",
    "STREAMS_PER_READ",
    "SWEEP_S",
    "Bells",
    "Ingress",
]

log = logging.getLogger("eventsched.worker")

PER_STREAM = 16  # entries of one stream per read: the most one principal gets ahead
STREAMS_PER_READ = 512  # streams named in one XREAD
SWEEP_S = 10.0  # how often every registered stream is read, for bells that were missed
MAX_ACTIVE = 100_000  # streams remembered as rung; a forged flood of names stops here
HOT_STREAMS = 256  # streams held in the blocking read
HOT_BLOCK_MS = 100  # how long it blocks before taking in streams that became hot
_PAGE = 1000
_NEW_CELLS_S = 1.0  # how often the bell listener looks for cells added since it subscribed


class Ingress:
    """The ingress streams of one cell, as its dispatch role's holder reads them."""

    def __init__(self, client: RedisClient, keys: CellKeys) -> None:
        self.client = client
        self.keys = keys
        # Sources that may have entries, oldest first, each with how often it rang: a
        # stream read empty leaves only if it did not ring again meanwhile.
        self._active: dict[str, int] = {}
        # Registered sources a sweep has yet to read: read in what room rung ones leave,
        # so a sweep of 10,000 streams never holds a bell back.
        self._unswept: dict[str, None] = {}
        # Source -> the newest ingress ID read from it, least recently read first: the
        # hot streams. ``_held``: those in the blocking read now, whose bells are moot.
        self._seen: dict[str, bytes] = {}
        self._held: frozenset[str] = frozenset()
        self._woken = anyio.Event()
        self._heated = anyio.Event()
        self.sweep_at = 0.0  # anyio time of the next sweep; 0: at once

    def ring(self, source: str) -> None:
        """A bell: ``source`` says its ingress has something."""
        if source in self._held:
            return  # the blocking read wakes with it
        if source in self._active:
            self._active[source] += 1
        elif len(self._active) < MAX_ACTIVE:
            if Principal.from_source(self.keys.namespace, self.keys.cell, source) is None:
                return  # no principal's name: nothing to read
            self._active[source] = 1
        self._woken.set()

    @property
    def pending(self) -> int:
        """Streams to read: rung, or not yet read by the current sweep."""
        return len(self._active) + len(self._unswept)

    def missed(self) -> None:
        """Bells may have gone unheard, or taken entries were not admitted: sweep at
        once, and read the hot streams from their start again."""
        self.sweep_at = 0.0
        for source in self._seen:
            self._cool(source)
        self._seen.clear()
        self._woken.set()

    def _cool(self, source: str) -> None:
        """``source`` leaves the blocking read: its bells count again, and it is read
        from its start once, for what came while they did not."""
        self._held -= {source}
        self._active.setdefault(source, 0)

    async def wait(self) -> None:
        """Until a bell rings or a sweep is due (the rung streams are kept above, so a
        bell between the wake and the next wait is not lost)."""
        if self.pending or anyio.current_time() >= self.sweep_at:
            return
        with anyio.move_on_after(self.sweep_at - anyio.current_time()):
            await self._woken.wait()
        self._woken = anyio.Event()

    async def _sweep(self) -> None:
        """Every registered source is to be read once."""
        self.sweep_at = anyio.current_time() + SWEEP_S
        cursor = 0
        while True:
            end = cursor + _PAGE - 1
            page = cast(list[bytes], await self.client.zrange(self.keys.principals, cursor, end))
            self._unswept.update((text(raw), None) for raw in page)
            if len(page) < _PAGE:
                return
            cursor += _PAGE

    async def take(self) -> list[Taken]:
        """One read of the streams that rang, with room left to a sweep's (a sweep
        begins first when one is due)."""
        if anyio.current_time() >= self.sweep_at:
            await self._sweep()
        rung = list(self._active.items())[:STREAMS_PER_READ]
        swept = [
            source
            for source in itertools.islice(self._unswept, STREAMS_PER_READ - len(rung))
            if source not in self._active
        ]
        if not rung and not swept:
            self._unswept.clear()
            return []
        cursors = {self.keys.ingress(source): "0-0" for source, _ in rung}
        cursors |= {self.keys.ingress(source): "0-0" for source in swept}
        reply = await xread_raw(self.client, cursors, None, PER_STREAM)
        found = {text(stream): entries for stream, entries in reply}
        taken: list[Taken] = []
        for source, rings in [*rung, *((source, 0) for source in swept)]:
            entries = found.get(self.keys.ingress(source), [])
            taken += [(source, entry_id, fields) for entry_id, fields in entries]
            self._unswept.pop(source, None)
            if len(entries) == PER_STREAM:  # more waiting: to the back of the line
                self._active[source] = self._active.pop(source, rings)
            elif self._active.get(source) == rings:  # read dry and did not ring since
                del self._active[source]
        return self._in_order(taken)

    def _in_order(self, taken: list[Taken]) -> list[Taken]:
        """The entries in the order the server's clock gave them (each stream's own order
        kept: a node registered before a finalize arrived is registered when it is
        decided), noting each stream's newest as hot."""
        for source, entry_id, _ in taken:
            self._seen.pop(source, None)
            self._seen[source] = entry_id
        while len(self._seen) > HOT_STREAMS:
            coldest = next(iter(self._seen))
            del self._seen[coldest]
            self._cool(coldest)
        if self._seen:
            self._heated.set()
        return sorted(taken, key=lambda entry: parse_id(text(entry[1])))

    async def take_hot(self, block_ms: int | None = HOT_BLOCK_MS) -> list[Taken]:
        """One blocking read of the hot streams, from the newest entry seen in each:
        whatever came after it, as soon as it comes (or nothing after ``block_ms``)."""
        while not self._seen:
            self._heated = anyio.Event()
            await self._heated.wait()
        # Held until the next read: what comes meanwhile, that read returns at once.
        self._held = frozenset(self._seen)
        cursors = {self.keys.ingress(source): text(last) for source, last in self._seen.items()}
        reply = await xread_raw(self.client, cursors, block_ms, PER_STREAM)
        prefix = len(self.keys.ingress(""))
        taken = [
            (text(stream)[prefix:], entry_id, fields)
            for stream, entries in reply
            for entry_id, fields in entries
        ]
        return self._in_order(taken)


class Bells:
    """One pub/sub subscription per worker to the bells of all its cells; a cell added
    while it listens is subscribed to within a second."""

    def __init__(self, client: RedisClient, cells: Sequence[Ingress]) -> None:
        self.client = client
        self.by_channel = {cell.keys.bell: cell for cell in cells}

    def add(self, cell: Ingress) -> None:
        self.by_channel[cell.keys.bell] = cell

    async def listen(self) -> None:
        """Hand each bell to its cell, until cancelled; after a broken subscription
        every cell sweeps, since bells rung meanwhile are gone."""
        while True:
            pubsub: PubSub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                # A cluster client picks the subscription's node from its slot map, which
                # it learns on its first command: one that subscribes first fails.
                await self.client.ping()
                subscribed: set[str] = set()
                while True:
                    new = [channel for channel in self.by_channel if channel not in subscribed]
                    if new:
                        await pubsub.subscribe(*new)
                        subscribed.update(new)
                        for channel in new:
                            self.by_channel[channel].missed()
                    if not subscribed:
                        await anyio.sleep(_NEW_CELLS_S)
                        continue
                    message = await pubsub.get_message(timeout=_NEW_CELLS_S)
                    if message is not None and message["type"] == "message":
                        self.by_channel[text(message["channel"])].ring(text(message["data"]))
            except (RedisError, OSError) as exc:
                log.warning("bells: subscription lost (%s); listening again", exc)
                await anyio.sleep(0.5)
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
