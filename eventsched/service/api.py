"""The HTTP API (FastAPI): the statistics snapshot of each cell served, its nodes, sessions
and jobs in the shapes the CLI's ``--json`` gives, Prometheus metrics, and health. Every
route but the two health checks takes the bearer token when one is set.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at
run time, and they name values local to ``create_app``."""

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from redis.exceptions import RedisError

from eventsched.dispatch.applier import APPLIER_GROUP
from eventsched.model.events import JobId, NodeId, SessionId
from eventsched.model.keys import CELL_PATTERN, ROLES, CellKeys
from eventsched.ops import inspection
from eventsched.projections.directory import find_cells
from eventsched.projections.stats import age_of, read_stats
from eventsched.service.metrics import CONTENT_TYPE, read_figures, render
from eventsched.store.client import RedisClient, Store
from eventsched.store.streams import text

__all__ = ["READY_LAG", "create_app"]

_STATIC = Path(__file__).with_name("static")  # shipped in the wheel: no CDN at run time
READY_LAG = 10_000  # log entries the dispatch role may be behind and still be ready
_CELLS_REFRESH_S = 10.0  # how often --all-cells looks for new cells


class _Problem(BaseModel):
    detail: str


class CellStats(BaseModel):
    snapshot: dict[str, Any] | None  # None until a worker published one
    age_ms: int | None
    stale: bool


class Stats(BaseModel):
    cells: dict[str, CellStats]


class Page(BaseModel):
    items: list[dict[str, Any]]
    next: str | None  # pass as ``after`` for the next page; None at the end


class Readiness(BaseModel):
    ready: bool
    reasons: list[str]


class _Cells:
    """The cells served: given, or every cell of the namespace, looked up again now and
    then (never per request)."""

    def __init__(self, namespace: str, given: Sequence[str] | None) -> None:
        self.namespace = namespace
        self.given = [CellKeys(cell, namespace) for cell in given] if given else None
        self._found: list[CellKeys] = []
        self._found_at = float("-inf")

    async def all(self, client: RedisClient) -> list[CellKeys]:
        if self.given is not None:
            return self.given
        if time.monotonic() > self._found_at + _CELLS_REFRESH_S:
            self._found, self._found_at = await find_cells(client, self.namespace), time.monotonic()
        return self._found

    async def one(self, client: RedisClient, cell: str | None) -> CellKeys:
        served = await self.all(client)
        for keys in served:
            if cell is None or keys.cell == cell:
                return keys
        raise HTTPException(404, f"cell {cell or '(any)'} is not served here")


def create_app(
    store: Store | RedisClient,
    namespace: str,
    cells: Sequence[str] | None = None,
    token: str | None = None,
) -> FastAPI:
    """The app serving ``cells`` of ``namespace`` (None: every cell found there) from
    ``store`` (a client of its own, made on the first request and closed at shutdown), or
    through a client the caller owns."""
    served = _Cells(namespace, cells)
    holder: dict[str, RedisClient] = {} if isinstance(store, Store) else {"given": store}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if "made" in holder:
                await holder.pop("made").aclose()

    def client() -> RedisClient:
        if not holder and isinstance(store, Store):  # in the server's own event loop
            holder["made"] = store.client()
        return next(iter(holder.values()))

    bearer = HTTPBearer(auto_error=False)

    def authorized(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not secrets.compare_digest(given, token.encode()):  # bytes: any header compares
            raise HTTPException(
                401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    app = FastAPI(
        title="eventsched",
        summary="Read-only: the cells' statistics, nodes, sessions and jobs, metrics, health.",
        lifespan=lifespan,
        responses={503: {"model": _Problem, "description": "Redis did not answer"}},
    )
    guarded = [Depends(authorized)]
    denied: dict[int | str, dict[str, Any]] = {
        401: {"model": _Problem, "description": "no bearer token, or not the server's"}
    }
    unknown: dict[int | str, dict[str, Any]] = {
        **denied,
        404: {"model": _Problem, "description": "no such cell, node, session or job"},
    }
    CellParam = Annotated[
        str | None,
        Query(pattern=CELL_PATTERN.pattern, description="the cell (default: the first served)"),
    ]

    @app.exception_handler(RedisError)
    async def redis_unreachable(_: Request, exc: RedisError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"redis: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"},
            503,
        )

    app.mount("/static", StaticFiles(directory=_STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        """The dashboard: a page that polls the API (static/dashboard.js); its calls carry
        the token, so the page itself does not."""
        return FileResponse(_STATIC / "index.html")

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        """The process answers."""
        return {"ok": True}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz() -> JSONResponse:
        """Redis answers, each role of each served cell is held by a live worker and the
        dispatch role is no more than READY_LAG log entries behind."""
        reasons: list[str] = []
        try:
            await client().ping()
            served_cells = await served.all(client())
            if not served_cells:
                reasons.append(f"no cell found in namespace {namespace}")
            for keys in served_cells:
                reasons += await _not_ready(client(), keys)
        except (RedisError, OSError) as exc:
            reasons.append(f"redis unreachable: {exc}")
        body = Readiness(ready=not reasons, reasons=reasons)
        return JSONResponse(body.model_dump(), 503 if reasons else 200)

    @app.get("/api/v1/stats", response_model=Stats, dependencies=guarded, responses=denied)
    async def stats() -> Stats:
        """The latest statistics snapshot of each cell served, with its age; stale when
        older than STALE_WINDOWS windows (no worker is publishing)."""
        found = {}
        for keys in await served.all(client()):
            snapshot = await read_stats(client(), keys)
            if snapshot is None:
                found[keys.cell] = CellStats(snapshot=None, age_ms=None, stale=True)
                continue
            age_ms, stale = age_of(snapshot)
            found[keys.cell] = CellStats(snapshot=snapshot, age_ms=age_ms, stale=stale)
        return Stats(cells=found)

    @app.get("/api/v1/nodes", response_model=Page, dependencies=guarded, responses=unknown)
    async def nodes(
        cell: CellParam = None,
        after: Annotated[
            NodeId | None, Query(description="the last node id of the page before")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Page:
        """Nodes in id order, a page at a time (the rows of ``eventsched nodes --json``)."""
        items, following = await inspection.node_page(
            client(), await served.one(client(), cell), after, limit
        )
        return Page(items=items, next=following)

    @app.get("/api/v1/nodes/{node_id}", dependencies=guarded, responses=unknown)
    async def node(node_id: NodeId, cell: CellParam = None) -> dict[str, Any]:
        """One node (``eventsched node show --json``)."""
        return _found(
            await inspection.node_detail(client(), await served.one(client(), cell), node_id),
            "node",
            node_id,
        )

    @app.get("/api/v1/sessions/{session_id}", dependencies=guarded, responses=unknown)
    async def session(session_id: SessionId, cell: CellParam = None) -> dict[str, Any]:
        """One session (``eventsched session show --json``)."""
        keys = await served.one(client(), cell)
        return _found(
            await inspection.session_detail(client(), keys, session_id), "session", session_id
        )

    @app.get("/api/v1/jobs/{job_id}", dependencies=guarded, responses=unknown)
    async def job(job_id: JobId, cell: CellParam = None) -> dict[str, Any]:
        """One job and its lineage (``eventsched job show --json``)."""
        return _found(
            await inspection.job_detail(client(), await served.one(client(), cell), job_id),
            "job",
            job_id,
        )

    @app.get("/metrics", dependencies=guarded, response_class=Response, responses=denied)
    async def metrics() -> Response:
        """Prometheus text: decisions, rejections and failures by reason, latency
        histograms, nodes, slots, queues, consumer lag, snapshot and marker age."""
        figures = await read_figures(client(), await served.all(client()))
        return Response(render(figures), media_type=CONTENT_TYPE)

    return app


def _found(row: dict[str, Any] | None, what: str, name: str) -> dict[str, Any]:
    if row is None:
        raise HTTPException(404, f"no {what} {name}")
    return row


async def _not_ready(client: RedisClient, keys: CellKeys) -> list[str]:
    reasons = []
    for role in ROLES:
        if await client.get(keys.lease(role)) is None:
            reasons.append(f"{keys.cell}: no worker holds the {role} role")
    if await client.exists(keys.log):
        for group in await client.xinfo_groups(keys.log):
            lag = group.get("lag")
            applier = text(group["name"]) == APPLIER_GROUP
            if applier and lag is not None and int(lag) > READY_LAG:
                reasons.append(f"{keys.cell}: dispatch is {int(lag)} log entries behind")
    return reasons
