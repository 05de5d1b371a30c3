"""mypy --strict stays clean: the packages, the tests, and the child code on the sandbox's path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = ROOT / "executor" / "child"

pytestmark = pytest.mark.checks


def mypy(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_packages_and_tests_type_check(tmp_path: Path) -> None:
    result = mypy(["executor", "supervisor_client", "tests"], ROOT, tmp_path)
    assert result.returncode == 0, result.stdout


def test_child_code_type_checks(tmp_path: Path) -> None:
    files = sorted(p.name for p in CHILD.glob("*.py"))
    result = mypy(["--strict", "--explicit-package-bases", *files], CHILD, tmp_path)
    assert result.returncode == 0, result.stdout
