"""The Dockerfile and compose.yaml, checked without building anything (CI has no image
registry): every path they copy or run exists, every command they run is one of ours,
the image runs as a user without privileges, and the cell they describe has Redis with
its append-only file, two workers, two echo nodes and a session client on one URL."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml
from eventsched.cli.app import app
from typer.testing import CliRunner

ROOT = Path(__file__).parent.parent
IN_IMAGE = "/opt/eventsched/examples/"


def _dockerfile() -> list[tuple[str, str]]:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines)
        if word and not word.startswith("#")
    ]


def test_the_image_is_the_wheel_on_slim_python_run_by_a_plain_user() -> None:
    steps = _dockerfile()
    assert [rest for word, rest in steps if word == "FROM"][-1] == "python:3.11-slim"
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            assert all((ROOT / source).exists() for source in sources), rest
    assert ("ENTRYPOINT", '["eventsched"]') in steps
    assert any(word == "RUN" and "pip install" in rest and ".whl" in rest for word, rest in steps)


def _services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services: dict[str, Any] = compose["services"]
    return services


def test_compose_runs_a_whole_cell_on_one_redis() -> None:
    services = _services()
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    ours = {name: spec for name, spec in services.items() if name != "redis"}
    assert ours["worker"]["deploy"]["replicas"] == 2
    examples = [spec["entrypoint"][1] for spec in ours.values() if "entrypoint" in spec]
    assert sorted(Path(path).name for path in examples) == [
        "echo_node.py",
        "echo_node.py",
        "session_client.py",
    ]
    for name, spec in ours.items():
        assert spec["environment"]["EVENTSCHED_REDIS_URL"] == "redis://redis:6379/0", name
        assert spec["depends_on"]["redis"]["condition"] == "service_healthy", name
        command = spec["command"]
        if "entrypoint" in spec:  # an example, with the URL of the compose's Redis
            assert (ROOT / "examples" / spec["entrypoint"][1].removeprefix(IN_IMAGE)).exists()
            assert command[command.index("--redis-url") + 1] == "redis://redis:6379/0"
        else:  # one of our commands, with options it takes
            result = CliRunner().invoke(app, [*command, "--help"])
            assert result.exit_code == 0, (name, result.output)
