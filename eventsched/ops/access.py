"""Redis ACL users for the cell's principals, each confined by Redis itself.

    node      append to its own ingress; read and acknowledge its own inbox
    gateway   append to its own ingress; read the outputs of its own sessions
    worker    every key and channel of the namespace; no admin or dangerous command
    operator  as a worker (the CLI appends pools and drains, requeues, rebuilds)
    operator-ro  reads only (stats, inspection, the dead letters; not verify)

A node or gateway also rings its cell's bell (pub/sub) and may PING and SELECT; any
other key, command or channel answers NOPERM. Users are made with ACL SETUSER and
saved with ACL SAVE when the server has an ACL file (docs/SECURITY.md). A new user's
password is random and shown once, inside the URL its client takes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import ResponseError

from eventsched.model.keys import SUFFIXES, CellKeys
from eventsched.model.principals import GATEWAY_PATTERN, NAMESPACE_ROLES, Principal, session_prefix
from eventsched.store.client import RedisClient
from eventsched.store.streams import text

__all__ = [
    "Credentials",
    "User",
    "add_principal",
    "add_trusted",
    "list_users",
    "remove_user",
    "rules_for",
]

# What every confined user may do besides its own keys: PING (health checks), SELECT
# (a URL's /db), and nothing of MULTI but the transaction a node reports a result in.
_CONFINED = ["+ping", "+select", "+multi", "+exec", "+discard", "+publish"]
_TRUSTED = ["+@all", "-@dangerous"]
# Reads only, and no scripts: EVALSHA declares its keys writable (verify, which runs
# the state script, needs an operator).
_READ_ONLY = ["+@read", "-@dangerous", "+ping", "+select"]


_TRUSTED_NAME = GATEWAY_PATTERN  # the same alphabet: no "~", nothing a URL must escape


@dataclass(frozen=True)
class Credentials:
    username: str
    url: str  # the admin's URL with this user's name and password
    saved: bool  # in the server's ACL file (False: it has none, see docs/SECURITY.md)


@dataclass(frozen=True)
class User:
    username: str
    enabled: bool
    rules: str  # as ACL LIST shows them, password hashes left out


def rules_for(role: str, keys: CellKeys, name: str) -> list[str]:
    """The ACL SETUSER rules of a principal (after ``reset``), without its password."""
    if role in ("node", "gateway"):
        principal = Principal(
            keys.namespace, keys.cell, "node" if role == "node" else "gateway", name
        )
        own = [*_CONFINED, f"&{keys.bell}", f"(%W~{keys.ingress(principal.source)} +xadd)"]
        if role == "node":
            return [*own, f"(~{keys.inbox(name)} +xreadgroup +xack)"]
        outputs = keys.prefix + SUFFIXES["output"] + session_prefix(name) + "*"
        return [*own, f"(%R~{outputs} +xread)"]
    everything = [f"~{keys.namespace}:*", f"&{keys.namespace}:*"]
    if role == "operator-ro":
        return [f"%R~{keys.namespace}:*", *_READ_ONLY]
    if role in NAMESPACE_ROLES:
        return [*everything, *_TRUSTED]
    raise ValueError(f"unknown role {role!r}: node, gateway, {', '.join(NAMESPACE_ROLES)}")


def _check_url(admin_url: str) -> None:
    if not admin_url.startswith(("redis://", "rediss://")):
        raise ValueError("ACL users need a real Redis: give a redis:// or rediss:// URL")


def _user_url(admin_url: str, username: str, password: str) -> str:
    """The admin's URL (host, port, db, TLS options) with the new user's credentials."""
    parts = urlsplit(admin_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{username}:{password}@{host}"))


async def _set_user(client: RedisClient, username: str, rules: list[str]) -> tuple[str, bool]:
    """Create or replace the user with a new password; returns it and whether the ACL
    file now holds the user (False: the server has none, see docs/SECURITY.md)."""
    password = secrets.token_hex(24)
    # The rules as ACL SETUSER takes them (redis-py's acl_setuser has no selectors).
    await client.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", username, "reset", "on", f">{password}", *rules
    )
    return password, await _save(client)


async def _save(client: RedisClient) -> bool:
    try:
        await client.acl_save()
    except ResponseError as exc:
        if "ACL file" in str(exc) or "aclfile" in str(exc).lower():
            return False
        raise
    return True


async def add_principal(
    client: RedisClient, admin_url: str, keys: CellKeys, role: str, name: str
) -> Credentials:
    """A node's or gateway's user, registered in the cell for the worker's sweeps."""
    if role not in ("node", "gateway"):
        raise ValueError(f"unknown role {role!r}")
    principal = Principal(keys.namespace, keys.cell, "node" if role == "node" else "gateway", name)
    _check_url(admin_url)
    password, saved = await _set_user(client, principal.username, rules_for(role, keys, name))
    await client.zadd(keys.principals, {principal.source: 0})
    return Credentials(
        principal.username, _user_url(admin_url, principal.username, password), saved
    )


async def add_trusted(
    client: RedisClient, admin_url: str, namespace: str, role: str, name: str
) -> Credentials:
    """A worker's or operator's user for every cell of ``namespace``."""
    if role not in NAMESPACE_ROLES or not _TRUSTED_NAME.match(name):
        raise ValueError(f"invalid {role} name {name!r}: letters, digits, - and _, at most 32")
    _check_url(admin_url)
    username = f"{namespace}~{role}~{name}"
    rules = rules_for(role, CellKeys(namespace=namespace), name)
    password, saved = await _set_user(client, username, rules)
    return Credentials(username, _user_url(admin_url, username, password), saved)


async def list_users(client: RedisClient, namespace: str) -> list[User]:
    """The namespace's users (``<namespace>~...``), by name."""
    found = []
    for raw in await client.acl_list():
        _, username, *rules = text(raw).split(" ")
        if username.startswith(f"{namespace}~"):
            shown = [rule for rule in rules if not rule.startswith("#")]
            found.append(
                User(username, "on" in shown, " ".join(r for r in shown if r not in ("on", "off")))
            )
    return sorted(found, key=lambda user: user.username)


async def remove_user(client: RedisClient, namespace: str, username: str) -> bool:
    """Delete the user (Redis disconnects its clients) and its registration; False
    when there was no such user of the namespace."""
    if not username.startswith(f"{namespace}~"):
        raise ValueError(f"{username!r} is not a user of namespace {namespace!r}")
    removed = int(await client.acl_deluser(username)) == 1
    principal = Principal.from_username(username)
    if principal is not None:
        await client.zrem(
            CellKeys(principal.cell, principal.namespace).principals, principal.source
        )
    if removed:
        await _save(client)
    return removed
