"""The Lua scripts, loaded once from package data and registered with redis-py, which
runs them by SHA (EVALSHA) and loads them again when Redis answers NOSCRIPT."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from redis.commands.core import AsyncScript

from eventsched.store.client import RedisClient

__all__ = ["declared_keys", "lua_source", "register"]


def _lua_dir() -> Traversable:
    packaged = resources.files("eventsched") / "lua"
    if packaged.is_dir():  # installed from a wheel: the scripts are package data
        return packaged
    return Path(__file__).resolve().parents[2] / "lua"  # a source checkout


_INCLUDE = re.compile(r"^-- @include (\w+)$", flags=re.MULTILINE)


@cache
def lua_source(name: str) -> str:
    """A script's text, with each ``-- @include NAME`` line replaced by lua/NAME.lua."""
    text = (_lua_dir() / f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda found: lua_source(found.group(1)), text)


def declared_keys(name: str) -> list[str]:
    """The KEYS a script's header declares, in order (``-- KEYS[n] name ...``)."""
    found = re.findall(r"^-- KEYS\[(\d+)\] (\w+)", lua_source(name), flags=re.MULTILINE)
    numbers = [int(n) for n, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise ValueError(f"{name}.lua: KEYS header is not numbered 1..n")
    return [key for _, key in found]


def register(client: RedisClient, name: str) -> AsyncScript:
    return client.register_script(lua_source(name))
