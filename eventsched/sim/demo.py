"""The demo: the load generator and an in-process worker on one store."""

from __future__ import annotations

import anyio

from eventsched.dispatch.worker import Worker
from eventsched.model.keys import CellKeys
from eventsched.model.settings import DecisionSettings
from eventsched.ops.audit import RunReport
from eventsched.ops.tuning import change_settings
from eventsched.sim.loadgen import LoadSpec, Progress, run_load
from eventsched.store.client import MEMORY_URL, Store

__all__ = ["run_demo"]


async def run_demo(
    url: str | Store = MEMORY_URL,
    keys: CellKeys | None = None,
    spec: LoadSpec | None = None,
    settings: DecisionSettings | None = None,
    on_progress: Progress | None = None,
) -> RunReport:
    """Run the load against an in-process worker; ``settings`` are put in force first,
    by a settings_changed event at the head of the demo's log."""
    cell = keys or CellKeys()
    store = url if isinstance(url, Store) else Store(url)
    loader, applier_client = store.client(), store.client()
    worker = Worker(applier_client, [cell], name="demo-worker")
    stop = anyio.Event()
    try:
        await loader.ping()  # fail fast, before the worker starts riding out outages
        if settings is not None and settings.differences():
            await change_settings(loader, cell, settings.differences())
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run, stop)
            report = await run_load(loader, [cell], spec or LoadSpec(), on_progress)
            stop.set()
        return report
    finally:
        await loader.aclose()
        await applier_client.aclose()
