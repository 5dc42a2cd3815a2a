"""``eventsched acl``: Redis users for nodes, gateways, workers and operators (run with
a URL whose user may run ACL commands, the default user's say)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from eventsched.model.keys import DEFAULT_CELL, DEFAULT_NAMESPACE, CellKeys
from eventsched.ops import access

from .common import (
    DEFAULT_URL,
    AsJson,
    Cell,
    Namespace,
    RedisUrl,
    command_group,
    run_with_client,
)

__all__ = ["register"]


acl_app = command_group(
    help="Redis users that confine nodes and gateways (docs/SECURITY.md).",
    no_args_is_help=True,
)


def _add_principal(url: str, keys: CellKeys, role: str, name: str) -> None:
    _created(run_with_client(url, lambda c: access.add_principal(c, url, keys, role, name)))


def _add_trusted(url: str, namespace: str, role: str, name: str) -> None:
    _created(run_with_client(url, lambda c: access.add_trusted(c, url, namespace, role, name)))


def _created(made: access.Credentials) -> None:
    where = "saved to the ACL file" if made.saved else "not saved: the server has no ACL file"
    print(f"user {made.username} created ({where}); its URL, shown once:")
    print(made.url)


@acl_app.command("add-node")
def add_node(
    node_id: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """A user for one GPU node: its own ingress and inbox, nothing else."""
    _add_principal(redis_url, CellKeys(cell, namespace), "node", node_id)


@acl_app.command("add-gateway")
def add_gateway(
    name: str,
    redis_url: RedisUrl = DEFAULT_URL,
    cell: Cell = DEFAULT_CELL,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """A user for one gateway: its own ingress and the outputs of its sessions
    (named NAME.<id>)."""
    _add_principal(redis_url, CellKeys(cell, namespace), "gateway", name)


@acl_app.command("add-worker")
def add_worker(
    name: str, redis_url: RedisUrl = DEFAULT_URL, namespace: Namespace = DEFAULT_NAMESPACE
) -> None:
    """A user for workers of every cell of the namespace."""
    _add_trusted(redis_url, namespace, "worker", name)


@acl_app.command("add-operator")
def add_operator(
    name: str,
    redis_url: RedisUrl = DEFAULT_URL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    read_only: Annotated[bool, typer.Option("--read-only", help="reads only (not verify)")] = False,
) -> None:
    """A user for the CLI on every cell of the namespace."""
    _add_trusted(redis_url, namespace, "operator-ro" if read_only else "operator", name)


@acl_app.command("list")
def acl_list(
    redis_url: RedisUrl = DEFAULT_URL,
    namespace: Namespace = DEFAULT_NAMESPACE,
    as_json: AsJson = False,
) -> None:
    """The namespace's users and their rules (never their passwords)."""
    users = run_with_client(redis_url, lambda c: access.list_users(c, namespace))
    if as_json:
        print(json.dumps([user.__dict__ for user in users], sort_keys=True))
        return
    table = Table(title=f"users of namespace {namespace}")
    for column in ("user", "on", "rules"):
        table.add_column(column)
    for user in users:
        table.add_row(user.username, "yes" if user.enabled else "no", user.rules)
    Console().print(table)


@acl_app.command("remove")
def acl_remove(
    username: str, redis_url: RedisUrl = DEFAULT_URL, namespace: Namespace = DEFAULT_NAMESPACE
) -> None:
    """Delete a user; Redis disconnects its clients at once."""
    if not run_with_client(redis_url, lambda c: access.remove_user(c, namespace, username)):
        raise ValueError(f"no user {username}")
    print(f"user {username} removed")


def register(app: typer.Typer) -> None:
    app.add_typer(acl_app, name="acl")
