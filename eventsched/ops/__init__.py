"""Operating a cell: verify, rebuild, dead letters, replay and record, the audit of a
run from its streams, and what the inspection commands show.

Layer 5. May import every layer below it.
"""
