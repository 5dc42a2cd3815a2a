"""The ``eventsched`` command. Thin: it parses options and calls the library."""

from __future__ import annotations

import logging
import sys

import typer
from pydantic import ValidationError
from redis.exceptions import RedisError

from . import run

__all__ = ["app", "main"]

app = typer.Typer(
    name="eventsched",
    help="An event-sourced scheduler for real-time speech translation, on Redis Streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
run.register(app)


def main() -> None:
    """Entry point: errors become one readable line and exit status 1, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()  # handles usage errors itself, then exits
    except (ValueError, ValidationError, RedisError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"eventsched: error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
