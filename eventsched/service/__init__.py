"""The HTTP face of a set of cells (``eventsched serve``): the statistics snapshots the
workers write, Prometheus metrics, health, and the operator's dashboard. Read-only: it
never writes to a cell, and a request reads only what the workers already wrote.

Layer 6, beside ``sim`` at the top of the library. May import every layer below it.
"""
