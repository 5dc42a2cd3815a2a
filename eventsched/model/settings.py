"""The settings that change decisions. They travel with a fixture, so replay uses the
values the live run used; everything here is an integer so Lua sees exact values."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DecisionSettings"]


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
        job running, every attempt ends by its deadline, and the ticks that see it may
        come late."""
        return 2 * self.max_attempts * self.job_timeout_ms

    @model_validator(mode="after")
    def _sessions_outlast_their_jobs(self) -> DecisionSettings:
        least = self.least_expire_after_ms
        if 0 < self.expire_after_ms < least:
            raise ValueError(
                f"expire_after_ms must be 0 or at least 2 x max_attempts x job_timeout_ms ({least})"
            )
        return self

    def as_argv(self) -> list[int]:
        """The values in the order apply.lua reads them (after its first three ARGV)."""
        return [
            self.rate_per_s,
            self.rate_burst,
            self.max_attempts,
            self.job_timeout_ms,
            self.heartbeat_fresh_ms,
            self.node_lost_ms,
            self.unavailable_window_ms,
            self.cpu_max_pct,
            self.gpu_max_pct,
            self.mem_max_pct,
            self.scan_limit,
            self.expire_after_ms,
            self.quarantine_after_timeouts,
            self.quarantine_ms,
        ]
