from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from eventsched.model.entries import node_pairs, stored_pairs
from eventsched.model.events import (
    Event,
    JobResult,
    NodeDeregistered,
    NodeDraining,
    NodeHeartbeat,
    NodeRegistered,
    Pool,
    PoolsConfigured,
    Services,
    SessionClosed,
    SessionOpened,
    StageTimings,
    UtteranceFinalized,
    decode_event,
    encode_event,
    job_id_of,
    split_job_id,
)

GOOD: list[Event] = [
    NodeRegistered(
        node_id="gpu-01.eu",
        services=Services(asr=["en", "zh"], nmt=["en", "zh", "ja"], tts=["zh", "en"]),
        semantic_languages=["en", "zh"],
        max_concurrency=4,
        gpu="A100 80G",
    ),
    NodeHeartbeat(node_id="n1", cpu_pct=10, gpu_pct=99, mem_pct=0, running_jobs=["s1:0"]),
    NodeDraining(node_id="n1"),
    NodeDeregistered(node_id="n1"),
    PoolsConfigured(pools=[Pool(name="asia", languages=["zh", "ja", "en"], order=2)]),
    PoolsConfigured(pools=[]),
    SessionOpened(session_id="s1", src_lang="en", tgt_lang="zh-CN"),
    UtteranceFinalized(
        session_id="s1", utterance_index=3, reason="max_length", audio_ref="a/3", duration_ms=1
    ),
    JobResult(
        job_id="s1:3",
        attempt=2,
        node_id="n1",
        ok=True,
        asr_text="你好",
        nmt_text="hello",
        tts_audio_ref="t/3",
        tts_duration_ms=800,
        timings=StageTimings(asr_ms=10, nmt_ms=20, tts_ms=30),
    ),
    JobResult(job_id="s1:3", attempt=1, node_id="n1", ok=False, error_code="MODEL_NOT_AVAILABLE"),
    SessionClosed(session_id="s1"),
]


@pytest.mark.parametrize("event", GOOD, ids=lambda e: e.type)
def test_good_events_round_trip_through_the_canonical_encoding(event: Event) -> None:
    encoded = encode_event(event)
    assert decode_event(encoded) == event
    assert encode_event(decode_event(encoded)) == encoded
    assert ", " not in encoded and ": " not in encoded
    keys = list(json.loads(encoded))
    assert keys == sorted(keys)


def _with(base: Event, **changes: Any) -> str:
    fields = base.model_dump(mode="json")
    fields.update(changes)
    return json.dumps(fields)


NODE, HEARTBEAT, POOLS, OPEN, FINALIZE, RESULT = (
    GOOD[0],
    GOOD[1],
    GOOD[4],
    GOOD[6],
    GOOD[7],
    GOOD[8],
)

BAD = {
    "unknown type": json.dumps({"type": "node_exploded", "v": 1, "node_id": "n1"}),
    "no type": json.dumps({"v": 1, "node_id": "n1"}),
    "unknown field": _with(NODE, color="red"),
    "other schema version": _with(NODE, v=2),
    "node id with a brace": _with(NODE, node_id="n{1}"),
    "node id too long": _with(NODE, node_id="n" * 65),
    "zero capacity": _with(NODE, max_concurrency=0),
    "huge capacity": _with(NODE, max_concurrency=5000),
    "bad language": _with(NODE, semantic_languages=["english"]),
    "duplicate language": _with(NODE, semantic_languages=["en", "en"]),
    "too many languages": _with(
        NODE, semantic_languages=[f"{a}{b}" for a in "abc" for b in "abcdefghijk"]
    ),
    "cpu over 100": _with(HEARTBEAT, cpu_pct=101),
    "cpu as text": _with(HEARTBEAT, cpu_pct="10"),
    "bad job id": _with(HEARTBEAT, running_jobs=["nocolon"]),
    "duplicate pool": _with(POOLS, pools=[{"name": "a", "languages": ["en", "zh"]}] * 2),
    "reserved pool name": _with(POOLS, pools=[{"name": "auto+x", "languages": ["en", "zh"]}]),
    "one-language pool": _with(POOLS, pools=[{"name": "a", "languages": ["en"]}]),
    "same src and tgt": _with(OPEN, tgt_lang="en"),
    "negative index": _with(FINALIZE, utterance_index=-1),
    "unknown cut reason": _with(FINALIZE, reason="cough"),
    "empty audio ref": _with(FINALIZE, audio_ref=""),
    "audio too long": _with(FINALIZE, duration_ms=600_001),
    "error without code": _with(RESULT, ok=False),
    "ok with code": _with(RESULT, error_code="MODEL_NOT_AVAILABLE"),
    "lower-case code": _with(RESULT, ok=False, error_code="oops"),
    "zero attempt": _with(RESULT, attempt=0),
    "text too long": _with(RESULT, asr_text="x" * 4097),
    "ok as string": _with(RESULT, ok="true"),
    "not json": "{nope",
    "not an object": "[1, 2]",
}


@pytest.mark.parametrize("raw", BAD.values(), ids=list(BAD))
def test_bad_events_are_rejected(raw: str) -> None:
    with pytest.raises(ValidationError):
        decode_event(raw)


def test_a_node_serves_the_pairs_all_three_stages_cover() -> None:
    services = Services(asr=["en", "ja"], nmt=["en", "zh", "ja"], tts=["zh", "en"])
    assert services.pairs() == ["en>zh", "ja>en", "ja>zh"]


_LANGS = st.lists(st.sampled_from(["de", "en", "es", "fr", "ja", "ko", "zh", "pt-BR"]), unique=True)


@given(asr=_LANGS, nmt=_LANGS, tts=_LANGS)
def test_a_node_record_names_exactly_the_pairs_its_services_cover(
    asr: list[str], nmt: list[str], tts: list[str]
) -> None:
    pairs = Services(asr=asr, nmt=nmt, tts=tts).pairs()
    assert node_pairs(stored_pairs(pairs)) == tuple(pairs)


def test_a_node_serving_every_pair_of_its_languages_is_recorded_short() -> None:
    # A hash value over hash-max-listpack-value (64 bytes by default) turns the whole
    # node record into a hash table, four times the memory: six languages stay under it.
    langs = ["de", "en", "es", "fr", "ja", "zh"]
    every = stored_pairs(Services(asr=langs, nmt=langs, tts=langs).pairs())
    assert every == "*,de,en,es,fr,ja,zh," and len(every) <= 64
    assert stored_pairs(["en>zh"]) == ",en>zh,"  # not every pair of en and zh
    assert stored_pairs([]) == ",,"


def test_pool_languages_fall_back_to_the_services_without_semantic_repair() -> None:
    registered = NodeRegistered(
        node_id="n1",
        services=Services(asr=["ja"], nmt=["ja", "en"], tts=["en"]),
        max_concurrency=1,
    )
    assert registered.pool_languages() == ["en", "ja"]
    assert GOOD[0].pool_languages() == ["en", "zh"]  # type: ignore[union-attr]


def test_job_ids_are_fixed_by_the_utterance() -> None:
    assert job_id_of("s-1.a", 12) == "s-1.a:12"
    assert split_job_id("s-1.a:12") == ("s-1.a", 12)
