"""The settings that change decisions. A cell's settings are its log's: the defaults
here, changed by ``settings_changed`` events from their place in the log on (apply.lua
folds them into the cell's settings hash), so a replay makes every decision the live
run made. Everything is an integer, so Lua sees exact values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "APPLY_ORDER",
    "DEFAULTS",
    "SETTING_NAMES",
    "DecisionSettings",
    "bounds",
    "check_changes",
]


class DecisionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_s: int = Field(default=10, ge=1, le=10_000, description="job creations per session")
    rate_burst: int = Field(default=10, ge=1, le=10_000, description="bucket size of the limit")
    max_attempts: int = Field(default=3, ge=1, le=100, description="attempts per job")
    job_timeout_ms: int = Field(default=15_000, ge=1, le=3_600_000, description="job deadline")
    heartbeat_fresh_ms: int = Field(
        default=3_000, ge=1, le=3_600_000, description="offered jobs this long after a beat"
    )
    node_lost_ms: int = Field(
        default=5_000, ge=1, le=3_600_000, description="no beat this long: lost, jobs move"
    )
    unavailable_window_ms: int = Field(
        default=10_000,
        ge=0,
        le=3_600_000,
        description="after MODEL_NOT_AVAILABLE the node is not offered that pair this long",
    )
    cpu_max_pct: int = Field(default=95, ge=0, le=100, description="overloaded above this")
    gpu_max_pct: int = Field(default=95, ge=0, le=100, description="overloaded above this")
    mem_max_pct: int = Field(default=95, ge=0, le=100, description="overloaded above this")
    scan_limit: int = Field(
        default=64, ge=1, le=10_000, description="pool members examined per pool per decision"
    )
    group_max_utterances: int = Field(
        default=32, ge=1, le=1000, description="a conversation group is cut after this many"
    )
    quarantine_after_timeouts: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="a node whose jobs time out this many times in a row is offered nothing"
        " for quarantine_ms (0: never)",
    )
    quarantine_ms: int = Field(
        default=60_000, ge=1, le=86_400_000, description="how long a quarantine lasts"
    )
    # A wait ends the moment a slot frees, so this bounds the worst case, not the usual
    # one: a burst of twice the free slots waits milliseconds (bench/burst.py). The bound
    # is for capacity lost for a while: a node that dies is still offered work until its
    # beat is stale (heartbeat_fresh_ms) and holds its jobs until it is lost
    # (node_lost_ms), and in the demo such outages kept a pair's slots taken for up to
    # 3.6 s. Waiting as long as node_lost_ms rides them out; a translation seconds late
    # still beats none for a live conversation (docs/CLI.md, README).
    queue_wait_ms: int = Field(
        default=5000,
        ge=0,
        le=60_000,
        description="a finalize (or retry) finding no free slot waits this long for one in"
        " its language pair's queue (0: rejected at once)",
    )
    queue_max: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="finalizes waiting per language pair; one more is rejected queue_full",
    )
    expire_after_ms: int = Field(
        default=600_000,
        ge=0,
        le=30 * 86_400_000,
        description="a finished job's record, and a session with no activity, go after this"
        " long (0: keep everything)",
    )

    @property
    def least_expire_after_ms(self) -> int:
        """The shortest expiry these attempts allow: a session must never expire with a
        job waiting or running, every attempt ends by its wait and its deadline, and the
        ticks that see it may come late."""
        return 2 * self.max_attempts * (self.queue_wait_ms + self.job_timeout_ms)

    @model_validator(mode="after")
    def _sessions_outlast_their_jobs(self) -> DecisionSettings:
        least = self.least_expire_after_ms
        if 0 < self.expire_after_ms < least:
            raise ValueError(
                "expire_after_ms must be 0 or at least 2 x max_attempts x (queue_wait_ms"
                f" + job_timeout_ms) ({least})"
            )
        return self

    def changed(self, changes: Mapping[str, int]) -> DecisionSettings:
        """These settings with ``changes`` made, validated together (ValueError)."""
        check_changes(changes)
        try:
            return DecisionSettings.model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:  # the rule between settings: one line
            raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None

    def differences(self, other: DecisionSettings | None = None) -> dict[str, int]:
        """The settings whose values differ from ``other``'s (the defaults)."""
        base = (other or DEFAULTS).model_dump()
        return {name: value for name, value in self.model_dump().items() if base[name] != value}

    def as_argv(self) -> list[int]:
        """The values apply.lua takes as its defaults (model.entries.APPLY_DEFAULTS), in
        its order."""
        return [getattr(self, name) for name in APPLY_ORDER]


DEFAULTS: Final = DecisionSettings()
SETTING_NAMES: Final = tuple(DecisionSettings.model_fields)
# The settings apply.lua reads, in the order of its SETTING_NAMES (tested);
# group_max_utterances is groups.lua's.
APPLY_ORDER: Final = (
    "rate_per_s",
    "rate_burst",
    "max_attempts",
    "job_timeout_ms",
    "heartbeat_fresh_ms",
    "node_lost_ms",
    "unavailable_window_ms",
    "cpu_max_pct",
    "gpu_max_pct",
    "mem_max_pct",
    "scan_limit",
    "expire_after_ms",
    "quarantine_after_timeouts",
    "quarantine_ms",
    "queue_wait_ms",
    "queue_max",
)


def bounds(name: str) -> tuple[int, int]:
    """The least and the greatest value the setting ``name`` takes."""
    least, most = 0, 0
    for item in DecisionSettings.model_fields[name].metadata:
        if isinstance(item, annotated_types.Ge):
            least = int(item.ge)  # type: ignore[call-overload]
        elif isinstance(item, annotated_types.Le):
            most = int(item.le)  # type: ignore[call-overload]
    return least, most


def check_changes(changes: Mapping[str, int]) -> None:
    """A ValueError naming the first unknown setting or out-of-bounds value; the rule
    between settings (``expire_after_ms``) is checked where they meet the settings in
    force (``DecisionSettings.changed``, and apply.lua for the log)."""
    for name, value in changes.items():
        if name not in DecisionSettings.model_fields:
            raise ValueError(f"unknown setting {name!r} (known: {', '.join(SETTING_NAMES)})")
        least, most = bounds(name)
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
            raise ValueError(f"{name}: {value!r} is not an integer from {least} to {most}")
