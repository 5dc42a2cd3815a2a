"""Simulating a cell: the load generator (on the node SDK and the session client) and
the demo (load generator and worker in one process); their report is ``ops.audit``.

Layer 6, the top of the library. May import every layer below it.
"""
