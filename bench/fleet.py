"""A realistic cell for the benchmarks: configured pools over several language pairs,
nodes of mixed language sets, sizes and GPUs beating with varied load, and sessions
spread over the pairs, all drawn from a seeded generator so every run builds the same.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar, cast

from eventsched.dispatch.applier import APPLIER_GROUP
from eventsched.dispatch.worker import Worker, ensure_group
from eventsched.model.events import (
    Event,
    NodeHeartbeat,
    NodeRegistered,
    Pool,
    PoolsConfigured,
    Services,
    SessionOpened,
    SettingsChanged,
)
from eventsched.model.keys import CellKeys
from eventsched.model.settings import DecisionSettings
from eventsched.store.append import append_many
from eventsched.store.client import RedisClient
from eventsched.store.streams import text
from tests.harness import ok

__all__ = [
    "PAIRS",
    "POOLS",
    "SETTINGS",
    "SETTINGS_CHANGED",
    "append_chunked",
    "apply",
    "beats",
    "build",
    "node_id",
    "nodes",
    "running_results",
    "session_id",
    "sessions",
]

# Benchmarks drive sessions far faster than people speak, and run for minutes with
# heartbeats only where a figure needs them: neither limit is what is being measured.
SETTINGS = DecisionSettings(rate_burst=10_000, rate_per_s=10_000, heartbeat_fresh_ms=3_600_000)
# What puts them in force: the first entry of every benchmark cell's log.
SETTINGS_CHANGED = SettingsChanged(settings=SETTINGS.differences())

POOLS = PoolsConfigured(
    pools=[
        Pool(name="en-zh", languages=["en", "zh"]),
        Pool(name="asia", languages=["en", "ja", "ko", "zh"], order=1),
        Pool(name="europe", languages=["de", "en", "es", "fr"]),
        Pool(name="en-ru", languages=["en", "ru"]),
    ]
)
# Language sets of the fleet's nodes, with their shares.
_PROFILES = (
    (("en", "zh"), 4),
    (("en", "ja", "ko", "zh"), 2),
    (("de", "en", "es", "fr"), 3),
    (("en", "ru"), 1),
)
# Session language pairs, with their shares: most traffic is en<>zh.
PAIRS = (
    (("en", "zh"), 4),
    (("zh", "en"), 3),
    (("en", "ja"), 1),
    (("ko", "en"), 1),
    (("de", "en"), 2),
    (("en", "fr"), 1),
    (("es", "en"), 1),
    (("en", "ru"), 1),
)
_GPUS = ("A10-24GB", "L4-24GB", "A100-80GB")
T = TypeVar("T")


def _weighted(rng: random.Random, choices: Sequence[tuple[T, int]]) -> T:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def node_id(index: int) -> str:
    return f"n{index:06d}"


def session_id(index: int) -> str:
    return f"s{index:06d}"


def nodes(
    count: int, seed: int = 1, max_concurrency: int | None = None, every_pair: bool = False
) -> list[NodeRegistered]:
    """The fleet; with ``every_pair`` each node serves every language (a few nodes that
    cover all sessions)."""
    rng = random.Random(seed)
    fleet = []
    everything = sorted({lang for langs, _ in _PROFILES for lang in langs})
    for index in range(count):
        langs = everything if every_pair else list(_weighted(rng, _PROFILES))
        fleet.append(
            NodeRegistered(
                node_id=node_id(index),
                services=Services(asr=langs, nmt=langs, tts=langs),
                semantic_languages=langs,
                max_concurrency=max_concurrency or rng.choice((2, 4, 8)),
                gpu=rng.choice(_GPUS),
            )
        )
    return fleet


def beats(count: int, nodes_in_fleet: int, seed: int = 2) -> list[NodeHeartbeat]:
    """``count`` heartbeats round the fleet with the figures a busy GPU node reports."""
    rng = random.Random(seed)
    return [
        NodeHeartbeat(
            node_id=node_id(index % nodes_in_fleet),
            cpu_pct=rng.randint(5, 70),
            gpu_pct=rng.randint(20, 90),
            mem_pct=rng.randint(30, 80),
            running_jobs=[f"s{rng.randrange(10**6):06d}:{j}" for j in range(rng.randint(0, 2))],
        )
        for index in range(count)
    ]


def sessions(count: int, seed: int = 3) -> list[SessionOpened]:
    rng = random.Random(seed)
    opened = []
    for index in range(count):
        src, tgt = _weighted(rng, PAIRS)
        opened.append(SessionOpened(session_id=session_id(index), src_lang=src, tgt_lang=tgt))
    return opened


async def append_chunked(client: RedisClient, keys: CellKeys, events: Sequence[Event]) -> list[str]:
    """Append in pipelines of 5,000; returns the log IDs."""
    ids: list[str] = []
    for start in range(0, len(events), 5000):
        ids += await append_many(client, keys, events[start : start + 5000])
    return ids


async def apply(client: RedisClient, keys: CellKeys) -> None:
    """Apply everything appended (dispatch projection only)."""
    await Worker(client, [keys], name="bench", batch_size=256, projections=("dispatch",)).drain()


async def build(
    client: RedisClient,
    keys: CellKeys,
    node_count: int,
    session_count: int,
    max_concurrency: int | None = None,
) -> None:
    """Settings and pools, then the fleet and the sessions, applied (dispatch projection
    only)."""
    await ensure_group(client, keys.log, APPLIER_GROUP)
    events: list[Event] = [SETTINGS_CHANGED, POOLS]
    events += nodes(node_count, max_concurrency=max_concurrency)
    events += sessions(session_count)
    await append_chunked(client, keys, events)
    await apply(client, keys)


async def running_results(
    client: RedisClient, keys: CellKeys, session_ids: Sequence[str], index: int
) -> list[Event]:
    """An ok result for each job of utterance ``index`` that runs now, from its node."""
    async with client.pipeline(transaction=False) as pipe:
        for session in session_ids:
            pipe.hmget(keys.job(f"{session}:{index}"), ["st", "node", "att"])
        records = cast(list[list[bytes | None]], await pipe.execute())
    return [
        ok(f"{session}:{index}", int(text(att or b"1")), text(node or b""))
        for session, (state, node, att) in zip(session_ids, records, strict=True)
        if state == b"run"
    ]
