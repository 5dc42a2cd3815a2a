"""The package's shape: layers as subpackages, no name that shadows the standard library,
a short public API that the README and the examples use, and ``python -m eventsched``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import eventsched

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("model", "store", "projections", "dispatch", "clients", "ops", "sim", "service")


def test_only_the_package_files_stand_at_the_top() -> None:
    assert sorted(p.name for p in (ROOT / "eventsched").glob("*.py")) == [
        "__init__.py",
        "__main__.py",
    ]
    packages = sorted(p.parent.name for p in (ROOT / "eventsched").glob("*/__init__.py"))
    assert packages == sorted(LAYERS)


def test_every_layer_says_what_it_holds_and_may_import() -> None:
    for layer in LAYERS:
        docstring = __import__(f"eventsched.{layer}", fromlist=["_"]).__doc__ or ""
        assert re.search(r"Layer \d", docstring), layer


def test_no_module_shadows_the_standard_library() -> None:
    modules = [*(ROOT / "eventsched").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
    names = {p.stem for p in modules} | {p.parent.name for p in modules}
    assert names & set(sys.stdlib_module_names) == set()


def test_the_readme_and_examples_import_the_public_api() -> None:
    exported = set(eventsched.__all__)
    assert all(hasattr(eventsched, name) for name in exported)
    sources = [ROOT / "README.md", *(ROOT / "examples").glob("*.py")]
    for source in sources:
        pattern = r"^from eventsched(\S*) import (?:\(([^)]+)\)|(.+))$"
        found = re.findall(pattern, source.read_text(), re.M)
        assert found, source
        for module, *lists in found:
            assert module == "", f"{source.name} imports from eventsched{module}"
            names = {n.strip() for n in "".join(lists).split(",")} - {""}
            assert names <= exported, source.name


def test_python_dash_m_runs_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventsched", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("worker", "replay", "verify", "dlq"):
        assert command in result.stdout
