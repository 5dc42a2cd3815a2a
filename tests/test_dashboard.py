"""The dashboard in a real browser: Debian's chromium, headless, loads the page that
``eventsched serve`` (a process of its own) serves while a demo load (another) runs, lets
its script poll the API, and gives back the DOM the script built (``--dump-dom``): the
cell's nodes, a pool row, the node table and a chart, and a later load of the page shows
a later statistics window. ``/readyz`` is 200 while the demo's worker runs and 503 once it
stopped. A screenshot is saved in the test's directory. (chromium's own command line, not
a driver library: selenium brings trio and sniffio, and sniffio makes anyio's pytest plugin
believe a loop is running in every sync test that uses an async fixture.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from eventsched.cli.common import run_with_client

from tests.conftest import REAL_AVAILABLE, REAL_URL, new_namespace, remove_namespace
from tests.servers import free_port, get_when_listening, wait_until

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.skipif(not REAL_AVAILABLE, reason=f"no real Redis at {REAL_URL}"),
    pytest.mark.skipif(
        not shutil.which(CHROMIUM) and os.environ.get("CI") != "true",
        reason="no chromium: apt-get install chromium (.ci/run does)",
    ),
    pytest.mark.timeout(240),
]
TOKEN = "dashboard-token"
_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def _eventsched(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("eventsched")), *args]


def _browse(url: str, *extra: str, budget_ms: int = 4000) -> str:
    """The DOM chromium has built of ``url`` after ``budget_ms`` of the page's own time
    (with ``extra`` options such as ``--screenshot=PATH``: nothing, the file is written)."""
    command = [
        CHROMIUM,
        *_FLAGS,
        f"--virtual-time-budget={budget_ms}",
        *(extra or ["--dump-dom"]),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert "<html" in done.stdout or "--screenshot" in " ".join(extra), done.stderr[-3000:]
    return done.stdout


def _stats(base: str) -> dict[str, object] | None:
    cell = httpx.get(f"{base}/api/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    snapshot = cell.json()["cells"]["c0"]["snapshot"]
    return snapshot if isinstance(snapshot, dict) else None


def test_the_dashboard_follows_a_demo_load(tmp_path: Path) -> None:
    namespace, port = new_namespace(), free_port()
    base = f"http://127.0.0.1:{port}"
    page = f"{base}/#token={TOKEN}"
    common = ["--redis-url", REAL_URL, "--namespace", namespace]
    serve = _eventsched("serve", *common, "--port", str(port), "--token", TOKEN)
    demo = _eventsched("demo", *common, "--utterances", "60", "--json")
    logs = [open(tmp_path / name, "wb") for name in ("serve.log", "demo.log")]  # noqa: SIM115
    with (
        logs[0],
        logs[1],
        subprocess.Popen(serve, stderr=logs[0]) as server,
        subprocess.Popen(demo, stdout=subprocess.DEVNULL, stderr=logs[1]) as load,
    ):
        try:
            get_when_listening(f"{base}/healthz")
            wait_until(
                lambda: httpx.get(f"{base}/readyz").status_code == 200, "the demo's worker", 90, 0.2
            )
            wait_until(lambda: _stats(base) is not None, "a first statistics window", 90, 0.2)
            first = _browse(page)
            assert 'data-cell="c0"' in first
            assert re.search(r'class="nodes-by-state"><dt>ready</dt><dd>\d+</dd>', first), first[
                :2000
            ]
            assert re.search(r'<tr data-pool="auto\+en\+zh">', first)
            assert len(re.findall(r"<tr><td>n-", first)) == 20  # the node table, every node
            assert re.search(r'class="chart rate"[^>]*data-points="[1-9]', first)
            seen = re.search(r'data-window="(\d+)"', first)
            assert seen is not None
            wait_until(
                lambda: int(str((_stats(base) or {}).get("window_start_ms", 0))) > int(seen[1]),
                "the next statistics window",
                90,
                0.2,
            )
            shot = f"--screenshot={tmp_path / 'dashboard.png'}"
            _browse(page, shot, "--window-size=1280,1000")  # a file, no DOM
            again = _browse(page)
            assert int(re.findall(r'data-window="(\d+)"', again)[0]) > int(seen[1])
            assert load.wait(timeout=150) == 0, (tmp_path / "demo.log").read_text()[-2000:]
            assert httpx.get(f"{base}/readyz").status_code == 503  # its leases are released
        finally:
            for process in (load, server):
                if process.poll() is None:
                    process.terminate()
                    process.wait(timeout=20)
            run_with_client(REAL_URL, lambda c: remove_namespace(c, namespace))
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
