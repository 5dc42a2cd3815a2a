"""The Lua code, loaded once from package data. A script is registered with redis-py,
which runs it by SHA (EVALSHA) and loads it again when Redis answers NOSCRIPT. A library
(a file ending in ``-- @register NAME``: apply.lua) is loaded with FUNCTION LOAD and its
one function called with FCALL, so the functions it defines are made once, not on every
call; its name carries a hash of its text, so each version is its own library (as a
script's SHA is) and one loaded again after a flush or a restart is the same one."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from eventsched.store.client import RedisClient

__all__ = ["Library", "callable_code", "declared_keys", "is_library", "lua_source", "register"]


def _lua_dir() -> Traversable:
    packaged = resources.files("eventsched") / "lua"
    if packaged.is_dir():  # installed from a wheel: the scripts are package data
        return packaged
    return Path(__file__).resolve().parents[2] / "lua"  # a source checkout


_INCLUDE = re.compile(r"^-- @include (\w+)$", flags=re.MULTILINE)
_REGISTER = re.compile(r"^-- @register (\w+)\n?\Z", flags=re.MULTILINE)


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


Args = Sequence[str | bytes | int | float]


class Library:
    """A library's one function, called as a registered script is: ``await f(keys=...,
    args=...)``; loaded when Redis says it has no such function (on a cluster, FUNCTION
    LOAD goes to every master, and replicas get it from theirs)."""

    def __init__(self, client: RedisClient, name: str) -> None:
        source = lua_source(name)
        found = _REGISTER.search(source)
        if found is None:
            raise ValueError(f"{name}.lua: no '-- @register NAME' line at its end")
        digest = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self.client = client
        self.function = f"es_{name}_{digest[:20]}"
        register_line = f"redis.register_function('{self.function}', {found.group(1)})\n"
        self.code = f"#!lua name={self.function}\n{source[: found.start()]}{register_line}"

    async def __call__(self, keys: Args, args: Args) -> Any:
        try:
            return await self.client.fcall(self.function, len(keys), *keys, *args)
        except ResponseError as exc:
            if "function not found" not in str(exc).lower():
                raise
        await self.load()
        return await self.client.fcall(self.function, len(keys), *keys, *args)

    async def load(self) -> None:
        try:
            await self.client.function_load(self.code)
        except ResponseError as exc:  # loaded meanwhile by another client: the same text
            if "already exists" not in str(exc):
                raise


@cache
def is_library(name: str) -> bool:
    return _REGISTER.search(lua_source(name)) is not None


def register(client: RedisClient, name: str) -> AsyncScript:
    """A script (not a library) registered with redis-py."""
    if is_library(name):
        raise ValueError(f"{name}.lua is a library: call it through Library")
    return client.register_script(lua_source(name))


def callable_code(client: RedisClient, name: str) -> AsyncScript | Library:
    """The script or the library ``name``, either called as ``await f(keys=, args=)``."""
    return Library(client, name) if is_library(name) else register(client, name)
