"""The write side: the applier (bounds, validation, argument building, one script call
per batch), worker roles with leases and fencing, takeover of pending entries, the
ticker, the job lifecycle log, retention and checkpoints.

Layer 4, beside ``clients`` and independent of it. May import ``model``, ``store`` and
``projections``.
"""
