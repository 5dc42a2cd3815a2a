"""A client that runs tasks of its own while its ``async with`` block lasts (a session
client's reader, a gateway's readers of its cells, a node's work)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import anyio
import anyio.abc

__all__ = ["Background"]


class Background:
    """Entering starts a task group (``started`` puts tasks in it); leaving ends them
    (``stopping``: cancels them unless overridden), waits for them, then calls
    ``ended``, also when the block or a task failed."""

    _group: anyio.abc.TaskGroup | None = None

    def started(self, group: anyio.abc.TaskGroup) -> None:
        """Start the client's tasks (none by default)."""

    def ended(self) -> None:
        """Release what the tasks served (nothing by default)."""

    async def stopping(self, group: anyio.abc.TaskGroup, cleanly: bool) -> None:
        """End the tasks as the block ends (``cleanly``: it raised nothing)."""
        group.cancel_scope.cancel()

    async def __aenter__(self) -> Self:
        self._group = await anyio.create_task_group().__aenter__()
        self.started(self._group)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool | None:
        assert self._group is not None
        try:
            await self.stopping(self._group, kind is None)
            return await self._group.__aexit__(kind, error, trace)
        finally:
            self.ended()
