"""One way to get Redis clients: a real server from a ``redis://`` URL (``rediss://`` for
TLS, with its files as URL options, see ``URL_OPTIONS``), a Redis Cluster from
``redis+cluster://host:port[,host:port...]`` (any of its nodes; the client finds the
rest), or the embedded fakeredis (created as Redis 7.0, Lua included) from ``memory://``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import fakeredis
import hiredis
import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventsched.model.principals import Principal

__all__ = [
    "CLUSTER_SCHEME",
    "MEMORY_URL",
    "UNREACHABLE",
    "URL_OPTIONS",
    "RedisClient",
    "Store",
    "connect",
    "is_cluster",
    "is_memory_url",
    "principal_of",
    "unlink_matching",
]

MEMORY_URL = "memory://"
# What a client rides out by trying again: Redis unreachable, or a cluster failing over
# (CLUSTERDOWN, TRYAGAIN, a slot no master serves yet) until a replica takes over.
UNREACHABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    OSError,
)
CLUSTER_SCHEME = "redis+cluster://"

# A RedisCluster client stands in for one: every key a command or script of eventsched
# touches shares its cell's hash tag, so each goes to one slot (tests/test_cluster.py
# holds the whole replay suite to that on a real cluster).
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


# What a Redis URL may carry after "?": redis-py's names, so the URL is the one
# redis-py takes. A name outside these is refused with the list, rather than passed on
# to fail later as an unexpected keyword deep in a connection.
URL_OPTIONS = {
    "db": "database number (the path's /N does the same)",
    "socket_timeout": "seconds a command may take",
    "socket_connect_timeout": "seconds a connection may take",
    "health_check_interval": "seconds between checks of an idle connection",
    "ssl_ca_certs": "rediss://: the CA certificate file that signed the server's",
    "ssl_certfile": "rediss://: this client's certificate file (tls-auth-clients)",
    "ssl_keyfile": "rediss://: this client's private key file",
    "ssl_cert_reqs": "rediss://: none, optional or required (default) server verification",
    "ssl_check_hostname": "rediss://: true to check the server's name against its certificate",
}
_FILE_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _check_options(url: str) -> None:
    parsed = urlsplit(url)
    options = parse_qs(parsed.query, keep_blank_values=True)
    for name, values in options.items():
        if name not in URL_OPTIONS:
            raise ValueError(
                f"unknown option {name!r} in the Redis URL; known: {', '.join(URL_OPTIONS)}"
            )
        if name.startswith("ssl_") and parsed.scheme != "rediss":
            raise ValueError(f"{name} is a TLS option: use a rediss:// URL")
        if name in _FILE_OPTIONS and not Path(unquote(values[-1])).is_file():
            raise ValueError(f"{name}: no such file {unquote(values[-1])!r}")


_NAMED_SERVERS: dict[str, fakeredis.FakeServer] = {}
# Connections a client may open (per cluster node). Each blocking read holds one while
# it waits, and one process may block on many (a load generator's nodes, a gateway's
# cells, a worker's roles): redis-py 8's default of 100 ends such a process with "Too
# many connections" (MaxConnectionsError).
_CONNECTIONS = 10_000


def _cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The ``host:port`` list of a ``redis+cluster://[user:password@]host:port,...`` URL,
    and the user and password to connect with (options are not taken yet)."""
    rest = url.removeprefix(CLUSTER_SCHEME).rstrip("/")
    credentials: dict[str, str] = {}
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        username, _, password = user.partition(":")
        credentials = {"username": unquote(username), "password": unquote(password)}
    nodes = []
    for part in rest.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{url!r}: a cluster URL is redis+cluster://host:port[,host:port...]")
        nodes.append((host, int(port)))
    return nodes, credentials


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
        schemes = ("redis://", "rediss://", "unix://", CLUSTER_SCHEME)
        if not is_memory_url(url) and not url.startswith(schemes):
            raise ValueError(
                f"unsupported Redis URL {url!r}: use redis://, rediss://, unix://,"
                " redis+cluster://host:port[,host:port...] or memory://"
            )
        if url.startswith(CLUSTER_SCHEME):
            self._nodes, self._credentials = _cluster_nodes(url)
        elif not is_memory_url(url):
            _check_options(url)
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
        if self.url.startswith(CLUSTER_SCHEME):
            nodes = [redis.cluster.ClusterNode(h, p) for h, p in self._nodes]  # type: ignore[no-untyped-call]
            cluster = redis.cluster.RedisCluster(
                startup_nodes=nodes,
                decode_responses=decode_responses,
                username=self._credentials.get("username"),
                password=self._credentials.get("password"),
            )
            return cast(redis.Redis, cluster)
        return redis.Redis.from_url(self.url, decode_responses=decode_responses)

    def client(self) -> RedisClient:
        if self._server is not None:
            client: RedisClient = fakeredis.FakeAsyncRedis(server=self._server)
            return client
        if self.url.startswith(CLUSTER_SCHEME):
            cluster = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in self._nodes],
                max_connections=_CONNECTIONS,
                # As with one Redis: no time bound on a reply (blocking reads bound their
                # own). redis-py's cluster default of 5 s ran each write in a task of its
                # own (asyncio.wait_for), which a topology refresh could disconnect under
                # it: an AttributeError from inside redis-py, not an error to retry.
                socket_timeout=None,
                username=self._credentials.get("username"),
                password=self._credentials.get("password"),
            )
            return cast(RedisClient, cluster)
        if self.url.startswith("redis://"):  # rediss:// and unix:// keep their own classes
            return aioredis.Redis.from_url(
                self.url, connection_class=_HiredisPackedConnection, max_connections=_CONNECTIONS
            )
        return aioredis.Redis.from_url(self.url, max_connections=_CONNECTIONS)


def connect(url: str = MEMORY_URL) -> RedisClient:
    """An asyncio client of the store at ``url`` (see ``Store``)."""
    return Store(url).client()


def is_cluster(client: RedisClient) -> bool:
    """Whether the client speaks to a Redis Cluster (a ``redis+cluster://`` store)."""
    return isinstance(client, RedisCluster)


def principal_of(client: RedisClient) -> Principal | None:
    """The confined principal (a node, a gateway) the client's Redis user stands for;
    None for any other user, the default one included (a trusted client)."""
    if is_cluster(client):
        username = cast(RedisCluster, client).connection_kwargs.get("username")
    else:
        username = client.connection_pool.connection_kwargs.get("username")
    return Principal.from_username(username)


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
