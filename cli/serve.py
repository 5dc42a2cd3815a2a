"""``eventsched serve``: the HTTP API, metrics and health of a set of cells."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from eventsched.model.keys import DEFAULT_CELL, DEFAULT_NAMESPACE
from eventsched.service.api import create_app
from eventsched.store.client import Store, is_memory_url

from .common import DEFAULT_URL, Cells, Namespace, RedisUrl

__all__ = ["register"]


def serve(
    redis_url: RedisUrl = DEFAULT_URL,
    cells: Cells = DEFAULT_CELL,
    all_cells: Annotated[
        bool,
        typer.Option("--all-cells", help="every cell of the namespace (found anew every 10 s)"),
    ] = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    host: Annotated[str, typer.Option(help="the address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EVENTSCHED_TOKEN",
            help="a bearer token every route but /healthz and /readyz requires",
        ),
    ] = None,
) -> None:
    """Serve /api/v1 (stats, nodes, sessions, jobs), /metrics, /healthz and /readyz,
    read-only, until SIGINT or SIGTERM."""
    if is_memory_url(redis_url):
        raise ValueError("serve shows what workers write: give the redis:// URL they use")
    store = Store(redis_url)
    chosen = None if all_cells else [cell.strip() for cell in cells.split(",") if cell.strip()]
    app = create_app(store, namespace, chosen, token)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command()(serve)
