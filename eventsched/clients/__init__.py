"""The clients: the node SDK for GPU nodes, the session client for gateways, and the
retry helper both use. They speak the protocol (docs/PROTOCOL.md) and nothing else.

Layer 4, beside ``dispatch`` and independent of it: a client never imports the
scheduler's insides. May import ``model``, ``store`` and ``projections``.
"""
