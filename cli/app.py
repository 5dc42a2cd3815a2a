"""The ``eventsched`` command. Thin: it parses options and calls the library."""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from typing import Annotated

import typer
from pydantic import ValidationError
from redis.exceptions import RedisError

from . import access, inspection, logs, monitor, ops, replay, run, serve, tuning
from .common import command_group

__all__ = ["app", "main"]

app = command_group(
    name="eventsched",
    help="An event-sourced scheduler for real-time speech translation, on Redis Streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        print(f"eventsched {version('eventsched')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version, exit"
        ),
    ] = False,
) -> None:
    """An event-sourced scheduler for real-time speech translation, on Redis Streams."""


run.register(app)
ops.register(app)
replay.register(app)
inspection.register(app)
monitor.register(app)
access.register(app)
tuning.register(app)
serve.register(app)


_EXPECTED = (ValueError, ValidationError, RedisError, OSError)
# What Redis says to a client that did not authenticate, in its versions' words.
_NEEDS_AUTH = re.compile(r"NOAUTH|Authentication required|HELLO must be called with the client")


def main() -> None:
    """Entry point: errors become one readable line and exit status 1, never a traceback."""
    logs.configure()
    try:
        app()  # handles usage errors itself, then exits
    except (*_EXPECTED, BaseExceptionGroup) as exc:
        cause = _first_expected(exc)
        if cause is None:
            raise
        message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        if _NEEDS_AUTH.search(message):
            message = "Redis wants a user and password: put user:password@ in the URL"
        print(f"eventsched: error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _first_expected(exc: BaseException) -> BaseException | None:
    """The error to report: ``exc`` itself, or the first expected one inside a group
    (task groups wrap what their tasks raise)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_expected(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, _EXPECTED) else None
