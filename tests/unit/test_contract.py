"""The picture stays true: fresh stubs, import boundaries, a typed client method per RPC."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = sys.stdlib_module_names

pytestmark = pytest.mark.unit


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_child_code_imports_only_the_stdlib_and_its_siblings() -> None:
    child = ROOT / "executor" / "child"
    siblings = {p.stem for p in child.glob("*.py")}
    for path in child.glob("*.py"):
        for module in imported_modules(path):
            top = module.split(".")[0]
            assert top in STDLIB or top in siblings or top == "__future__", (path.name, module)


def test_supervisor_client_never_imports_executor() -> None:
    for path in (ROOT / "supervisor_client").rglob("*.py"):
        for module in imported_modules(path):
            assert module.split(".")[0] != "executor", (path, module)


# The gRPC edge: every servicer, converter and client of another service, and nothing else.
EDGE = "executor/api/"


def test_only_the_edge_touches_generated_messages() -> None:
    for path in (ROOT / "executor").rglob("*.py"):
        if any(
            "qbcallback" in m or m.startswith("google.protobuf") for m in imported_modules(path)
        ):
            assert str(path.relative_to(ROOT)).startswith(EDGE), path


def test_every_language_offers_the_same_instance_verbs(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import re

    from executor.supervisor_link import SUBJOB_VERBS

    monkeypatch.syspath_prepend(str(ROOT / "executor" / "child"))  # as inside the sandbox
    qb = importlib.import_module("qb")

    python = {
        name[len("subjob") :]
        for name in dir(qb)
        if name.startswith("subjob") and name != "subjobstatus"
    }
    perl_source = (ROOT / "executor" / "child" / "perl" / "qb.pm").read_text()
    match = re.search(r"my @SUBJOB_VERBS = qw\(([^)]*)\)", perl_source)
    assert match is not None
    assert python == set(SUBJOB_VERBS) == set(match.group(1).split())


def test_status_details_are_bounded() -> None:
    from executor.api.errors import MAX_DETAILS_CHARS, bounded

    assert bounded("short") == "short"
    long = bounded("x" * 100_000)
    assert long.startswith("x" * MAX_DETAILS_CHARS) and long.endswith("(98000 more characters)")
