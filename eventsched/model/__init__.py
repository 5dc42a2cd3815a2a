"""The model: events and their bounds, every key name of a cell, the settings that
change decisions.

Layer 1, the bottom. Imports nothing else of eventsched and no Redis client; pydantic
and the standard library only.
"""
