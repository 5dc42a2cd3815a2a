"""One way to get Redis clients: a real server from a ``redis://`` URL, or the embedded
fakeredis (created as Redis 7.0, Lua included) from ``memory://``."""

from __future__ import annotations

from typing import Any

import fakeredis
import hiredis
import redis
import redis.asyncio as aioredis

__all__ = ["MEMORY_URL", "RedisClient", "Store", "connect", "is_memory_url", "unlink_matching"]

MEMORY_URL = "memory://"

RedisClient = aioredis.Redis


def is_memory_url(url: str) -> bool:
    return url.startswith("memory://")


class _HiredisPackedConnection(aioredis.Connection):
    """Commands packed by hiredis in C. redis-py's blocking connections do this when
    hiredis is installed; its asyncio ones pack in Python, which was a tenth of a
    gateway's or a worker's CPU under load (py-spy). Same bytes; anything hiredis will
    not pack (a bool, None) goes to redis-py's packer for its usual error."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])  # "CONFIG GET" is two words
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)


_NAMED_SERVERS: dict[str, fakeredis.FakeServer] = {}


def _embedded_server(url: str) -> fakeredis.FakeServer:
    """``memory://`` is a new, empty embedded store each time; ``memory://NAME`` is the
    one store of that name in this process (so separate commands can share it)."""
    name = url.removeprefix("memory://")
    if not name:
        return fakeredis.FakeServer(version=(7, 0))
    if name not in _NAMED_SERVERS:
        _NAMED_SERVERS[name] = fakeredis.FakeServer(version=(7, 0))
    return _NAMED_SERVERS[name]


class Store:
    """A place the scheduler's data lives. Every client of one ``memory://`` store sees
    the same embedded server, so a worker and a load generator in one process share it."""

    def __init__(self, url: str = MEMORY_URL) -> None:
        if not is_memory_url(url) and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"unsupported Redis URL {url!r}: use redis://, rediss://, unix:// or memory://"
            )
        self.url = url
        self._server = _embedded_server(url) if is_memory_url(url) else None

    @property
    def embedded(self) -> bool:
        return self._server is not None

    def sync_client(self, decode_responses: bool = False) -> redis.Redis:
        """A blocking client of the same store (threads, scripts, other languages'
        stand-ins in tests); fakeredis serialises access to its server."""
        if self._server is not None:
            sync: redis.Redis = fakeredis.FakeRedis(
                server=self._server, decode_responses=decode_responses
            )
            return sync
        return redis.Redis.from_url(self.url, decode_responses=decode_responses)

    def client(self) -> RedisClient:
        if self._server is not None:
            client: RedisClient = fakeredis.FakeAsyncRedis(server=self._server)
            return client
        if self.url.startswith("redis://"):  # rediss:// and unix:// keep their own classes
            return aioredis.Redis.from_url(self.url, connection_class=_HiredisPackedConnection)
        return aioredis.Redis.from_url(self.url)


def connect(url: str = MEMORY_URL) -> RedisClient:
    """An asyncio client of the store at ``url`` (see ``Store``)."""
    return Store(url).client()


async def unlink_matching(client: RedisClient, pattern: str, page: int = 500) -> int:
    """Unlink every key matching ``pattern``, a page of keys per call; returns how many.
    Callers match within one cell, whose keys share a hash tag."""
    removed = 0
    found: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        found.append(key)
        if len(found) == page:
            removed += int(await client.unlink(*found))
            found = []
    if found:
        removed += int(await client.unlink(*found))
    return removed
