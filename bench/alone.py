"""What the benchmark scripts share: a percentile, waiting for a process they started,
and running one benchmark alone on a private redis-server (a free port, a temp dir,
stopped by its pid) so that INFO and MEMORY figures count only the benchmark."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from tests.servers import private_redis

__all__ = ["percentile", "print_figures", "private_server", "until"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextmanager
def private_server() -> Iterator[str]:
    """The URL of a redis-server started for this run."""
    with tempfile.TemporaryDirectory() as directory, private_redis(Path(directory)) as url:
        yield url


async def print_figures(measure: Callable[[str], Awaitable[dict[str, float]]]) -> None:
    """Run ``measure`` on a private server and print its figures, a line each."""
    with private_server() as url:
        figures = await measure(url)
    for name, value in figures.items():
        print(f"{name:<32}{value:>12}")


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0
) -> None:
    """Wait for ``condition`` (polled), or fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        await anyio.sleep(0.05)
