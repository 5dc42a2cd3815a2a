"""The store: a client from a URL (Redis, or the embedded fakeredis), the Lua scripts
as package data (registered, EVALSHA with reload on NOSCRIPT), typed stream reads and
appends to a cell's log.

Layer 2. May import ``model``.
"""
