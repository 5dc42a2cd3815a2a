"""The store: a client from a URL (Redis, Redis Cluster, or the embedded fakeredis), the
Lua code as package data (scripts by EVALSHA with reload on NOSCRIPT, the apply library
by FCALL, loaded when missing), typed stream reads and appends to a cell's log (a
trusted producer's decided in the same call).

Layer 2. May import ``model``.
"""
