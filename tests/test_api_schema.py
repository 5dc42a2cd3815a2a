"""Every route of the HTTP API against what schemathesis generates from the app's own
OpenAPI document: no request, however odd, gets a server error (only /readyz answers 503,
by design: no worker runs here). The app serves a
replayed fixture's cell, on fakeredis and on the real Redis, from uvicorn on a port."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from eventsched.cli.common import run_with_client
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from eventsched.model.keys import CellKeys
from eventsched.ops.replay import load_fixture, play
from eventsched.service.api import create_app
from eventsched.store.client import Store, is_memory_url
from tests.conftest import new_namespace, remove_namespace
from tests.servers import free_port, wait_until

FIXTURE = Path(__file__).parent.parent / "replay_fixtures" / "17_queue_burst_served.jsonl"
TOKEN = "schema-token"


@pytest.fixture
def served(store_url: str) -> Iterator[str]:
    """The base URL of the app serving a cell that a fixture left with nodes, sessions,
    jobs, decisions and waits (a named embedded store, so the server's own client sees
    what this process played into it)."""
    url = f"memory://schema-{uuid.uuid4().hex[:8]}" if is_memory_url(store_url) else store_url
    keys = CellKeys("c0", new_namespace())
    run_with_client(url, lambda c: play(c, keys, load_fixture(FIXTURE)))
    app = create_app(Store(url), keys.namespace, [keys.cell], TOKEN)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start")
    assert server.started, "uvicorn stopped before it listened"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        run_with_client(url, lambda c: remove_namespace(c, keys.namespace))


def test_no_generated_request_gets_a_server_error(served: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the app's own document must be valid
        operations.append(result.ok())
    assert len(operations) >= 8  # every route of the document

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            for authorization in (f"Bearer {TOKEN}", ""):
                response = case.call(headers={"Authorization": authorization})
                # /readyz answers 503 by design (no worker runs here); nothing else may
                failed = response.status_code >= 500 and case.formatted_path != "/readyz"
                assert not failed, (case.method, case.formatted_path, response.text)
                # status, content type and body as documented (the 503 of /readyz too)
                case.validate_response(response, excluded_checks=[not_a_server_error])

        check()
