"""The trust boundary as Redis enforces it, on a private redis-server (fakeredis has no
ACLs): users made by ``eventsched acl`` reach only what their role allows, every attack
from the audit answers NOPERM or ends as a dead letter with no effect, and the node SDK
and the session client run end to end with their own confined users."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from eventsched import JobOutput, Node, Services, SessionClient
from eventsched.dispatch.worker import Worker
from eventsched.model.events import ENTRY_FIELD, Event, encode_event
from eventsched.model.keys import CellKeys
from eventsched.ops import access
from eventsched.ops.verify import verify_cell
from eventsched.store.client import Store
from eventsched.store.streams import read_stream
from tests.harness import beat, error, node, ok, wait_for
from tests.live import steady
from tests.servers import RedisProcess

pytestmark = pytest.mark.anyio

KEYS = CellKeys("c0", "es")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path_factory.mktemp("acl"))
    process.start()
    yield process
    process.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventsched", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def urls(server: RedisProcess) -> dict[str, str]:
    """One user per role, made by the command, each URL its last line of output."""
    made = {}
    for name, args in {
        "worker": ("add-worker", "w1"),
        "n1": ("add-node", "n1"),
        "n2": ("add-node", "n2"),
        "g1": ("add-gateway", "g1"),
        "g2": ("add-gateway", "g2"),
        "ro": ("add-operator", "ro", "--read-only"),
    }.items():
        done = cli("acl", *args, "--redis-url", server.url)
        assert done.returncode == 0, done.stderr
        made[name] = done.stdout.strip().splitlines()[-1]
    return made


def sync(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def refused(call: Callable[[], Any]) -> bool:
    try:
        call()
    except NoPermissionError:
        return True
    return False


def test_a_node_reaches_its_own_ingress_and_inbox_only(urls: dict[str, str]) -> None:
    n1 = sync(urls["n1"])
    n1.xadd(KEYS.ingress("node:n1"), {ENTRY_FIELD: encode_event(beat("n1"))})
    n1.publish(KEYS.bell, "node:n1")
    assert n1.ping()
    job = KEYS.job("g1.s:0")
    forbidden: dict[str, Callable[[], Any]] = {
        "append to the log": lambda: n1.xadd(KEYS.log, {"e": "x"}),
        "append to another's ingress": lambda: n1.xadd(KEYS.ingress("node:n2"), {"e": "x"}),
        "read its own ingress": lambda: n1.xrange(KEYS.ingress("node:n1")),
        "forge a job in its inbox": lambda: n1.xadd(KEYS.inbox("n1"), {"job": "x"}),
        "read another's inbox": lambda: n1.xreadgroup("node", "n1", {KEYS.inbox("n2"): ">"}),
        "join another's inbox group": lambda: n1.xgroup_createconsumer(
            KEYS.inbox("n2"), "node", "thief"
        ),
        "read a job record": lambda: n1.hgetall(job),
        "read a key by GET": lambda: n1.get(job),
        "read a session's output": lambda: n1.xread({KEYS.output("g1.s"): "0"}),
        "write the decisions": lambda: n1.xadd(KEYS.decisions, {"k": "o"}),
        "take a lease": lambda: n1.set(KEYS.dispatch_lease, "n1"),
        "scan": lambda: n1.scan(0),
        "keys": lambda: n1.keys("*"),
        "client list": lambda: n1.client_list(),
        "config": lambda: n1.config_get("*"),
        "flushall": lambda: n1.flushall(),
        "run a script": lambda: n1.eval("return 1", 0),
        "another channel": lambda: n1.publish("es:{c1}:bell", "node:n1"),
        "acl": lambda: n1.acl_list(),
    }
    allowed = [what for what, call in forbidden.items() if not refused(call)]
    assert allowed == []
    with pytest.raises(NoPermissionError):
        n1.execute_command("MONITOR")  # type: ignore[no-untyped-call]


def test_a_gateway_reads_the_outputs_of_its_own_sessions_only(urls: dict[str, str]) -> None:
    g1 = sync(urls["g1"])
    assert g1.xread({KEYS.output("g1.s"): "0"}) == []
    forbidden: dict[str, Callable[[], Any]] = {
        "another gateway's session": lambda: g1.xread({KEYS.output("g2.s"): "0"}),
        "a session outside any gateway": lambda: g1.xread({KEYS.output("s"): "0"}),
        "its own and another's in one read": lambda: g1.xread(
            {KEYS.output("g1.s"): "0", KEYS.output("g2.s"): "0"}
        ),
        "a node's inbox (audio refs)": lambda: g1.xrange(KEYS.inbox("n1")),
        "the session record": lambda: g1.hgetall(KEYS.session("g1.s")),
        "the log": lambda: g1.xadd(KEYS.log, {"e": "x"}),
        "another's ingress": lambda: g1.xadd(KEYS.ingress("gateway:g2"), {"e": "x"}),
        "scan": lambda: g1.scan(0),
    }
    assert [what for what, call in forbidden.items() if not refused(call)] == []


def test_workers_and_operators_have_the_namespace_and_no_admin(
    server: RedisProcess, urls: dict[str, str]
) -> None:
    worker, read_only = sync(urls["worker"]), sync(urls["ro"])
    worker.set("es:{c9}:probe", "1")
    assert read_only.get("es:{c9}:probe") == b"1"
    for call in (
        lambda: worker.set("other:{c0}:x", "1"),  # outside the namespace
        lambda: worker.flushall(),
        lambda: worker.config_get("*"),
        lambda: worker.acl_list(),
        lambda: read_only.set("es:{c9}:probe", "2"),
        lambda: read_only.xadd(KEYS.log, {"e": "x"}),
        lambda: read_only.eval("return redis.call('SET', KEYS[1], 2)", 1, "es:{c9}:probe"),
        lambda: read_only.eval("return redis.call('SET', 'es:{c9}:probe', 2)", 0),
    ):
        assert refused(call)
    sync(server.url).delete("es:{c9}:probe")


def test_the_acl_command_lists_and_removes_users(server: RedisProcess) -> None:
    made = cli("acl", "add-node", "gone-1", "--redis-url", server.url)
    url = made.stdout.strip().splitlines()[-1]
    assert sync(url).ping()
    listed = json.loads(cli("acl", "list", "--json", "--redis-url", server.url).stdout)
    mine = [user for user in listed if user["username"] == "es~c0~node~gone-1"]
    assert mine and mine[0]["enabled"] and "#" not in mine[0]["rules"]
    assert cli("acl", "remove", "es~c0~node~gone-1", "--redis-url", server.url).returncode == 0
    with pytest.raises((AuthenticationError, ResponseError)):
        sync(url).ping()
    assert not sync(server.url).zscore(KEYS.principals, "node:gone-1")
    again = cli("acl", "remove", "es~c0~node~gone-1", "--redis-url", server.url)
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    embedded = cli("acl", "add-node", "x", "--redis-url", "memory://")
    assert embedded.returncode == 1 and "real Redis" in embedded.stderr
    bad_name = cli("acl", "add-gateway", "a.b", "--redis-url", server.url)
    assert bad_name.returncode == 1 and "invalid gateway name" in bad_name.stderr


async def test_confined_nodes_and_a_gateway_run_end_to_end_and_forgeries_do_nothing(
    urls: dict[str, str], server: RedisProcess
) -> None:
    keys = CellKeys("c0", "es")
    worker_client = Store(urls["worker"]).client()
    clients = {name: Store(urls[name]).client() for name in ("n1", "n2", "g1")}

    async def echo(job: Any) -> JobOutput:
        return JobOutput(asr_text=f"asr {job.utterance_index}", nmt_text="nmt")

    services = Services(asr=["en"], nmt=["en", "zh"], tts=["zh"])
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as group:
            worker = Worker(worker_client, [keys], name="w", tick_ms=50)
            group.start_soon(worker.run, stop)
            async with (
                Node(clients["n1"], keys, "n1", services, 8, echo, heartbeat_s=0.2, load=steady),
                SessionClient(clients["g1"], keys) as gateway,
            ):

                async def registered() -> bool:
                    return await worker_client.hget(keys.node("n1"), "st") == b"up"

                await wait_for(registered)  # else the first finalizes find no node
                session = await gateway.open("talk", "en", "zh")
                assert session.session_id == "g1.talk"
                # n2, with its own user, forges what the audit found: a result and an
                # error under n1's name, a 100 % heartbeat and a deregistration of n1.
                forged: list[Event] = [
                    ok("g1.talk:0", 1, "n1"),
                    error("g1.talk:0", 1, "n1"),
                    beat("n1", cpu=100),
                    node("n1", langs=("fr",)),
                ]
                for event in forged:
                    await clients["n2"].xadd(
                        keys.ingress("node:n2"), {ENTRY_FIELD: encode_event(event)}
                    )
                await clients["n2"].publish(keys.bell, "node:n2")
                for index in range(5):
                    await session.finalize(index, "pause", f"a/{index}", 1000)
                texts = []
                async for outcome in session.outcomes():
                    texts.append(outcome.asr_text)
                    if len(texts) == 5:
                        break
                await session.close()
            assert texts == [f"asr {index}" for index in range(5)]
            stop.set()
        reasons = [f["reason"] async for _, f in read_stream(worker_client, keys.dlq)]
        # (the first test's heartbeat, sent before n1 registered, is an unknown_node)
        from_n2 = [reason for reason in reasons if "node:n2" in reason]
        assert len(from_n2) == len(forged)
        assert all(reason.startswith("identity_mismatch: node:n2") for reason in from_n2)
        attempts = [f async for _, f in read_stream(worker_client, keys.decisions)]
        assert {d["node"] for d in attempts if d["k"] == "d"} == {"n1"}
        assert not [d for d in attempts if d["k"] in ("m", "f")]
        report = await verify_cell(worker_client, keys)
        assert report.ok, report.problems
    finally:
        for client in (worker_client, *clients.values()):
            await client.aclose()


async def test_add_principal_refuses_an_embedded_store_before_changing_anything() -> None:
    client = Store("memory://").client()
    with pytest.raises(ValueError, match="real Redis"):
        await access.add_principal(client, "memory://", KEYS, "node", "n1")
    assert not await client.exists(KEYS.principals)
    await client.aclose()


def test_the_rules_give_each_principal_its_own_keys() -> None:
    rules = " ".join(access.rules_for("node", KEYS, "n1"))
    assert "%W~es:{c0}:in:node:n1 +xadd" in rules and "~es:{c0}:inbox:n1 " in rules
    assert "out:" not in rules and "~es:*" not in rules
    assert "%R~es:{c0}:out:g1.* +xread" in " ".join(access.rules_for("gateway", KEYS, "g1"))


async def test_a_confined_client_must_be_the_principal_its_user_is(urls: dict[str, str]) -> None:
    node_client, gateway_client = Store(urls["n1"]).client(), Store(urls["g1"]).client()
    services = Services(asr=["en"], nmt=["en", "zh"], tts=["zh"])

    async def echo(job: Any) -> JobOutput:
        return JobOutput()

    try:
        with pytest.raises(ValueError, match="is not node n2"):
            Node(node_client, KEYS, "n2", services, 1, echo)
        with pytest.raises(ValueError, match="belongs to cell c0"):
            Node(node_client, CellKeys("c1"), "n1", services, 1, echo)
        with pytest.raises(ValueError, match="is not gateway"):
            SessionClient(node_client, KEYS)
        assert SessionClient(gateway_client, KEYS).session_name("x") == "g1.x"
        assert SessionClient(gateway_client, KEYS).session_name("g1.x") == "g1.x"
    finally:
        await node_client.aclose()
        await gateway_client.aclose()


def test_users_are_saved_when_the_server_has_an_acl_file(tmp_path: Path) -> None:
    acl_file = tmp_path / "users.acl"
    acl_file.write_text("")  # Redis wants it to exist
    server = RedisProcess(tmp_path, "--aclfile", str(acl_file))
    server.start()
    try:
        made = cli("acl", "add-gateway", "eu1", "--redis-url", server.url)
        assert "saved to the ACL file" in made.stdout
        assert "user es~c0~gateway~eu1 on" in acl_file.read_text()
        server.stop()
        server.start()  # the user outlives a restart
        assert sync(made.stdout.strip().splitlines()[-1]).ping()
    finally:
        server.stop()
