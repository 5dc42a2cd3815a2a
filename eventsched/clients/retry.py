"""Riding out a lost connection or a Redis restart, as producers and nodes must."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from eventsched.store.client import UNREACHABLE

__all__ = ["patiently"]

T = TypeVar("T")

_BACKOFF_MAX_S = 1.0


async def patiently(operation: Callable[[], Awaitable[T]], outage_s: float | None = 60.0) -> T:
    """Run a Redis operation, retrying with backoff while Redis is unreachable (or a
    cluster fails over: ``store.client.UNREACHABLE``), for at
    most ``outage_s`` (None: forever). A retried append may land twice: the log is
    at-least-once and the scheduler's idempotency makes duplicates harmless."""
    delay = 0.05
    deadline = None if outage_s is None else time.monotonic() + outage_s
    while True:
        try:
            return await operation()
        except UNREACHABLE:
            if deadline is not None and time.monotonic() > deadline:
                raise
            await anyio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
