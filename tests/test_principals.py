"""Who a Redis user is, and what each principal may send (no Redis)."""

from __future__ import annotations

import pytest

from eventsched.model.events import PoolsConfigured, Tick
from eventsched.model.principals import Principal, lawful_event, refusal
from tests.harness import beat, finalize, node, session


def test_a_user_name_carries_its_principal_and_nothing_else_passes_for_one() -> None:
    principal = Principal.from_username("es~c0~node~gpu-7.a")
    assert principal == Principal("es", "c0", "node", "gpu-7.a")
    assert principal.source == "node:gpu-7.a" and principal.username == "es~c0~node~gpu-7.a"
    for other in (None, "default", "es~worker~w1", "es~c0~admin~x", "es~c0~gateway~a.b", "a~b~c"):
        assert Principal.from_username(other) is None
    with pytest.raises(ValueError):
        Principal("es", "c0", "gateway", "has.dot")


def test_each_principal_may_send_its_own_events_only() -> None:
    assert refusal("node:n1", beat("n1")) is None
    assert refusal("gateway:g1", finalize("g1.s", 0)) is None
    assert (
        refusal("node:n1", beat("n2"))
        == "identity_mismatch: node:n1 sent node_heartbeat for node n2"
    )
    assert refusal("gateway:g1", node("g1")) == "identity_mismatch: gateway:g1 sent node_registered"
    assert refusal("gateway:g1", session("g1")) == "not_owner: session g1 is not gateway g1's"
    assert str(refusal("gateway:g1", session("g10.s"))).startswith("not_owner")
    for event in (Tick(), PoolsConfigured(pools=[])):
        assert refusal("node:n1", event) is not None
        assert refusal("gateway:g1", event) is not None


def test_readers_of_the_log_skip_what_its_source_may_not_send() -> None:
    raw = beat("n1").model_dump_json()
    assert lawful_event({"e": raw}) == beat("n1")
    assert lawful_event({"by": "node:n1", "e": raw}) == beat("n1")
    assert lawful_event({"by": "node:n2", "e": raw}) is None
    assert lawful_event({"by": "node:n1", "e": raw, "x": "1"}) is None
    assert lawful_event({"e": "{"}) is None
