"""Gateways and nodes over the many cells of a namespace (Redis Cluster's unit of scale:
one cell, one hash slot). Both choose a cell from the cell directory
(``projections.directory``), which each cell's dispatch worker rewrites with what the
cell offers every statistics window:

- a node is given a cell (a fleet plan: the load generator's puts each language set in
  cells of its own, so that nodes in a cell back each other up), or takes the listed
  cell with the fewest slots serving its language pairs (``assign_node_cell``);
- a session opens in the listed cell whose nodes serve its language pair with the
  fewest sessions per slot serving it, counting the sessions this gateway has put there
  since the cell's offer was written; a pair no cell serves goes to the least loaded
  cell, where it waits or is rejected as in any cell (``choose_session_cell``).

Ties go by a rendezvous hash of the ID, so gateways that read the same directory
spread their sessions alike instead of all choosing the first cell.

    async with Gateway(client, "es") as gateway:
        session = await gateway.open("s1", "en", "zh")   # in the cell chosen for en>zh
        ...                                             # as with SessionClient

A ``Gateway`` holds one ``SessionClient`` per cell it has sessions in, so it reads with
one blocking XREAD per cell (each in one slot), never one per session, and never one
across cells.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

import anyio

from eventsched.clients.background import Background
from eventsched.clients.retry import patiently
from eventsched.clients.session import Session, SessionClient
from eventsched.model.keys import CellKeys
from eventsched.projections.directory import CellOffer, read_directory
from eventsched.store.client import RedisClient

__all__ = ["Gateway", "assign_node_cell", "choose_node_cell", "choose_session_cell"]

DIRECTORY_REFRESH_S = 5.0  # the statistics window: offers change no faster


def _tie(cell: str, name: str) -> bytes:
    return hashlib.blake2b(f"{cell}/{name}".encode(), digest_size=8).digest()


def choose_node_cell(offers: Mapping[str, CellOffer], node_id: str, pairs: Collection[str]) -> str:
    """The listed cell that most needs what the node serves: the fewest slots serving
    its pairs (on average over them), then the fewest nodes."""
    if not offers:
        raise LookupError("no cells are listed in the directory (eventsched cells --add)")

    def need(cell: str) -> tuple[float, int, bytes]:
        served = offers[cell].pairs
        slots = sum(served.get(pair, 0) for pair in pairs) / max(1, len(pairs))
        return slots, offers[cell].nodes, _tie(cell, node_id)

    return min(offers, key=need)


async def assign_node_cell(
    client: RedisClient, namespace: str, node_id: str, pairs: Collection[str]
) -> CellKeys:
    """The cell a node with no cell given registers in (``choose_node_cell`` over the
    directory as it is now)."""
    offers = await read_directory(client, namespace)
    return CellKeys(choose_node_cell(offers, node_id, pairs), namespace)


def choose_session_cell(
    offers: Mapping[str, CellOffer], session_id: str, pair: str, placed: Counter[str]
) -> str:
    """The listed cell serving ``pair`` with the fewest sessions per slot serving it (its
    offer's sessions plus ``placed``); the least loaded cell when none serves it."""
    if not offers:
        raise LookupError("no cells are listed in the directory (eventsched cells --add)")
    serving = [cell for cell, offer in offers.items() if offer.pairs.get(pair, 0) > 0]
    if serving:
        return min(
            serving,
            key=lambda c: (
                (offers[c].sessions + placed[c]) / offers[c].pairs[pair],
                _tie(c, session_id),
            ),
        )
    return min(offers, key=lambda c: (offers[c].sessions + placed[c], _tie(c, session_id)))


class Gateway(Background):
    """A gateway's sessions over the listed cells of a namespace (those in ``only``, when
    given); ``options`` go to each cell's ``SessionClient`` (block_ms, resend_after_s,
    max_sends)."""

    def __init__(
        self,
        client: RedisClient,
        namespace: str,
        only: Collection[str] | None = None,
        **options: Any,
    ) -> None:
        self.redis = client
        self.namespace = namespace
        self.only = None if only is None else set(only)
        self.options = options
        self.cells: dict[str, SessionClient] = {}  # cell -> its session client, once used
        self._offers: dict[str, CellOffer] = {}
        self._read_at = float("-inf")
        self._placed: Counter[str] = Counter()  # sessions put in a cell since its offer

    async def offers(self) -> dict[str, CellOffer]:
        """The directory, read again once its offers may have changed."""
        if anyio.current_time() >= self._read_at + DIRECTORY_REFRESH_S:
            found = await patiently(lambda: read_directory(self.redis, self.namespace))
            if self.only is not None:
                found = {cell: offer for cell, offer in found.items() if cell in self.only}
            for cell, offer in found.items():
                if offer.at_ms != self._offers.get(cell, CellOffer(cell)).at_ms:
                    self._placed[cell] = 0  # the new offer counts what was placed before
            self._offers, self._read_at = found, anyio.current_time()
        return self._offers

    def client_of(self, cell: str) -> SessionClient:
        """The session client of a cell, its reader started on first use."""
        if cell not in self.cells:
            if self._group is None:
                raise RuntimeError("a Gateway opens sessions inside `async with`")
            started = SessionClient(self.redis, CellKeys(cell, self.namespace), **self.options)
            self._group.start_soon(started.run)
            self.cells[cell] = started
        return self.cells[cell]

    async def open(self, session_id: str, src_lang: str, tgt_lang: str) -> Session:
        """Open the session in the cell chosen for its language pair and load."""
        cell = choose_session_cell(
            await self.offers(), session_id, f"{src_lang}>{tgt_lang}", self._placed
        )
        self._placed[cell] += 1
        return await self.client_of(cell).open(session_id, src_lang, tgt_lang)

    async def resend_now(self) -> None:
        """Send again every finalize still waiting, in every cell (after a failover)."""
        for gateway in list(self.cells.values()):
            await gateway.resend_now()

    def ended(self) -> None:
        for gateway in self.cells.values():
            gateway.release()
