"""The events of a cell's log: pydantic models, their bounds and one canonical encoding.

Every input to the scheduler is one of these, appended to the cell's log stream as a
single field ``e`` holding the event's canonical JSON. Unknown types, unknown fields and
out-of-bounds values are rejected; the applier dead-letters what does not validate.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from eventsched.model.settings import check_changes

__all__ = [
    "ENTRY_FIELD",
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "SOURCE_FIELD",
    "Event",
    "JobId",
    "JobResult",
    "Lang",
    "NodeDeregistered",
    "NodeDraining",
    "NodeHeartbeat",
    "NodeId",
    "NodeRegistered",
    "NodeUndrained",
    "Pool",
    "PoolsConfigured",
    "Services",
    "SessionClosed",
    "SessionId",
    "SessionOpened",
    "SettingsChanged",
    "StageTimings",
    "Tick",
    "UtteranceFinalized",
    "canonical_json",
    "decode_event",
    "encode_event",
    "job_id_of",
    "split_job_id",
]

SCHEMA_VERSION: Final = 1
ENTRY_FIELD = "e"
# The principal an entry was admitted from (model.principals), stamped by the worker.
SOURCE_FIELD = "by"

# Identifiers are restricted to characters that cannot break a key name, a hash tag
# ("{", "}") or the separators the scripts use ("," ":" ">" "|").
NodeId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
SessionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}:[0-9]{1,9}$")]
Lang = Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")]
PoolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")]
ErrorCode = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
Percent = Annotated[int, Field(ge=0, le=100)]
DurationMs = Annotated[int, Field(ge=0, le=600_000)]
LangList = Annotated[list[Lang], Field(max_length=32)]

MAX_TEXT = 4096
MAX_REF = 512


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Event(_Model):
    v: Literal[1] = SCHEMA_VERSION


def _unique(values: list[str], what: str) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has duplicates")


class Services(_Model):
    """The languages each service of a node handles. NMT translates between any two."""

    asr: LangList = []
    nmt: LangList = []
    tts: LangList = []
    semantic: LangList = []

    @model_validator(mode="after")
    def _no_duplicates(self) -> Services:
        for name in ("asr", "nmt", "tts", "semantic"):
            _unique(getattr(self, name), name)
        return self

    def pairs(self) -> list[str]:
        """Every "src>tgt" pair whose three stages this node serves, sorted."""
        nmt = set(self.nmt)
        return sorted(
            f"{src}>{tgt}"
            for src in self.asr
            for tgt in self.tts
            if src != tgt and src in nmt and tgt in nmt
        )


class NodeRegistered(_Event):
    type: Literal["node_registered"] = "node_registered"
    node_id: NodeId
    services: Services
    semantic_languages: LangList = []
    max_concurrency: int = Field(ge=1, le=1024)
    gpu: str = Field(default="", max_length=128)

    @model_validator(mode="after")
    def _check(self) -> NodeRegistered:
        _unique(self.semantic_languages, "semantic_languages")
        return self

    def pool_languages(self) -> list[str]:
        """The languages the node is pooled by: its semantic languages (the seeds' Phase3
        rule) or, for a node without semantic repair, every language its services touch."""
        if self.semantic_languages:
            return sorted(self.semantic_languages)
        s = self.services
        return sorted(set(s.asr) | set(s.nmt) | set(s.tts))


class NodeHeartbeat(_Event):
    type: Literal["node_heartbeat"] = "node_heartbeat"
    node_id: NodeId
    cpu_pct: Percent
    gpu_pct: Percent | None  # null: the node has no GPU (not the same as 0 %)
    mem_pct: Percent
    running_jobs: Annotated[list[JobId], Field(max_length=1024)] = []


class NodeDraining(_Event):
    type: Literal["node_draining"] = "node_draining"
    node_id: NodeId


class NodeUndrained(_Event):
    """An operator takes a drain back: the node is offered work again."""

    type: Literal["node_undrained"] = "node_undrained"
    node_id: NodeId


class NodeDeregistered(_Event):
    type: Literal["node_deregistered"] = "node_deregistered"
    node_id: NodeId


class Pool(_Model):
    name: PoolName
    languages: Annotated[list[Lang], Field(min_length=2, max_length=32)]
    order: int = Field(default=0, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _check(self) -> Pool:
        _unique(self.languages, "languages")
        if self.name.startswith("auto+"):
            raise ValueError("pool names starting with 'auto+' are reserved for derived pools")
        return self


class PoolsConfigured(_Event):
    """Replaces the cell's pools. An empty list returns the cell to derived (auto) pools."""

    type: Literal["pools_configured"] = "pools_configured"
    pools: Annotated[list[Pool], Field(max_length=256)]

    @model_validator(mode="after")
    def _check(self) -> PoolsConfigured:
        _unique([p.name for p in self.pools], "pool names")
        return self


class SessionOpened(_Event):
    type: Literal["session_opened"] = "session_opened"
    session_id: SessionId
    src_lang: Lang
    tgt_lang: Lang

    @model_validator(mode="after")
    def _check(self) -> SessionOpened:
        if self.src_lang == self.tgt_lang:
            raise ValueError("src_lang and tgt_lang must differ")
        return self


class UtteranceFinalized(_Event):
    type: Literal["utterance_finalized"] = "utterance_finalized"
    session_id: SessionId
    utterance_index: int = Field(ge=0, le=999_999_999)
    reason: Literal["pause", "max_length", "client"]
    audio_ref: str = Field(min_length=1, max_length=MAX_REF)
    duration_ms: DurationMs


class StageTimings(_Model):
    asr_ms: DurationMs = 0
    nmt_ms: DurationMs = 0
    tts_ms: DurationMs = 0


class JobResult(_Event):
    type: Literal["job_result"] = "job_result"
    job_id: JobId
    attempt: int = Field(ge=1, le=100)
    node_id: NodeId
    ok: bool
    error_code: ErrorCode | None = None
    asr_text: str = Field(default="", max_length=MAX_TEXT)
    nmt_text: str = Field(default="", max_length=MAX_TEXT)
    tts_audio_ref: str = Field(default="", max_length=MAX_REF)
    tts_duration_ms: DurationMs = 0
    timings: StageTimings = StageTimings()

    @model_validator(mode="after")
    def _check(self) -> JobResult:
        if self.ok == (self.error_code is not None):
            raise ValueError("error_code is required when ok is false, and only then")
        return self


class SessionClosed(_Event):
    type: Literal["session_closed"] = "session_closed"
    session_id: SessionId


class SettingsChanged(_Event):
    """An operator changes decision settings (model.settings): the ones named hold from
    this entry on, the others stay as they were."""

    type: Literal["settings_changed"] = "settings_changed"
    settings: Annotated[dict[str, int], Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _check(self) -> SettingsChanged:
        check_changes(self.settings)
        return self


class Tick(_Event):
    """Time passing. Its stream ID is the time: deadlines and liveness are checked then."""

    type: Literal["tick"] = "tick"


Event = Annotated[
    NodeRegistered
    | NodeHeartbeat
    | NodeDraining
    | NodeUndrained
    | NodeDeregistered
    | PoolsConfigured
    | SessionOpened
    | UtteranceFinalized
    | JobResult
    | SessionClosed
    | SettingsChanged
    | Tick,
    Field(discriminator="type"),
]

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
# Every event's ``type``, in the order of the union above.
EVENT_TYPES: Final = tuple(
    kind.model_fields["type"].default for kind in get_args(get_args(Event)[0])
)


def canonical_json(value: Any) -> str:
    """The one JSON form eventsched writes: sorted keys, no spaces, UTF-8 text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encode_event(event: Event) -> str:
    return canonical_json(event.model_dump(mode="json"))


def decode_event(raw: str | bytes) -> Event:
    """Parse and validate one event; raises pydantic.ValidationError."""
    return _EVENT_ADAPTER.validate_json(raw)


def job_id_of(session_id: str, utterance_index: int) -> str:
    """A job is one utterance: its id is fixed by the utterance, whatever the attempt."""
    return f"{session_id}:{utterance_index}"


def split_job_id(job_id: str) -> tuple[str, int]:
    session_id, _, index = job_id.rpartition(":")
    return session_id, int(index)
