"""The cell directory: the cells of a namespace and what each offers, in one hash of
its own (``NamespaceKeys.directory``), so that a gateway or a node chooses a cell with
one read instead of asking every cell.

A cell is listed when an operator adds it (``eventsched cells add``) or a worker takes
its dispatch role; its holder rewrites the cell's offer (nodes alive, sessions open,
free slots, the slots of the nodes up serving each language pair) with each statistics
window, from the
snapshot it has just built. The directory is advice, never state a decision reads: a
stale offer sends a session to a cell that then queues or rejects it, as any cell
would. Every write touches the directory alone, never beside a cell's key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsched.model.keys import CellKeys, NamespaceKeys
from eventsched.store.client import RedisClient
from eventsched.store.streams import text

__all__ = ["CellOffer", "find_cells", "list_in_directory", "publish_offer", "read_directory"]


@dataclass(frozen=True)
class CellOffer:
    cell: str
    nodes: int = 0  # nodes up (ready or overloaded)
    sessions: int = 0  # sessions open
    free_slots: int = 0
    pairs: Mapping[str, int] = field(default_factory=dict)  # "src>tgt" -> slots serving it
    at_ms: int = 0  # wall time of the offer; 0: listed, nothing offered yet

    @classmethod
    def parse(cls, cell: str, raw: bytes | str) -> CellOffer:
        """An offer as written, or an empty one for bytes that are not (a hand-edited
        hash must not stop a gateway)."""
        try:
            found = json.loads(raw)
            return cls(
                cell=cell,
                nodes=int(found.get("nodes", 0)),
                sessions=int(found.get("sessions", 0)),
                free_slots=int(found.get("free_slots", 0)),
                pairs={str(p): int(n) for p, n in dict(found.get("pairs", {})).items()},
                at_ms=int(found.get("at_ms", 0)),
            )
        except (ValueError, TypeError, AttributeError):
            return cls(cell=cell)


def _offer_of(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    by_state = snapshot.get("nodes_by_state", {})
    return {
        "nodes": by_state.get("ready", 0) + by_state.get("overloaded", 0),
        "sessions": snapshot.get("sessions", {}).get("open", 0),
        "free_slots": sum(pool["free_slots"] for pool in snapshot.get("pools", {}).values()),
        "pairs": snapshot.get("pair_slots", {}),
        "at_ms": int(time.time() * 1000),
    }


async def publish_offer(client: RedisClient, keys: CellKeys, snapshot: Mapping[str, Any]) -> None:
    """Write the cell's offer from a statistics snapshot (the dispatch role's holder)."""
    offer = json.dumps(_offer_of(snapshot), sort_keys=True)
    await client.hset(NamespaceKeys(keys.namespace).directory, keys.cell, offer)


async def list_in_directory(client: RedisClient, cells: Sequence[CellKeys]) -> int:
    """List cells that are not listed yet (their offers are left alone); returns how
    many were new."""
    added = 0
    for keys in cells:
        directory = NamespaceKeys(keys.namespace).directory
        added += int(await client.hsetnx(directory, keys.cell, "{}"))
    return added


async def read_directory(client: RedisClient, namespace: str) -> dict[str, CellOffer]:
    """Every listed cell's offer, by cell; names that are not cell names are skipped."""
    found = await client.hgetall(NamespaceKeys(namespace).directory)
    offers = {}
    for raw_cell, raw in found.items():
        cell = text(raw_cell)
        try:
            CellKeys(cell, namespace)
        except ValueError:
            continue
        offers[cell] = CellOffer.parse(cell, raw)
    return dict(sorted(offers.items()))


async def find_cells(client: RedisClient, namespace: str, scan: bool = True) -> list[CellKeys]:
    """The namespace's cells: those listed in the directory and, with ``scan``, every cell
    that has a log (SCAN, which a cluster client runs on every master; a cell made
    before the directory, or by a single-cell worker, is found so)."""
    found = set(await read_directory(client, namespace))
    if scan:
        async for raw in client.scan_iter(match=f"{namespace}:{{*}}:log", count=1000):
            name = text(raw)
            cell = name[len(namespace) + 2 : name.index("}")]
            try:
                CellKeys(cell, namespace)
            except ValueError:
                continue
            found.add(cell)
    return [CellKeys(cell, namespace) for cell in sorted(found)]
