"""The README stands alone, and its quick start's two commands keep out of each other's way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from executor.config import Settings
from tests.conftest import DEFAULT_TEST_UID_BASES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def quickstart() -> list[str]:
    """The commands .ci/run reads: the ```sh quickstart block's lines but comments."""
    block = README.split("```sh quickstart\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_the_readme_cites_nothing_outside_the_repository() -> None:
    assert "qube-callbacks" not in README
    assert "../shared" not in README and "shared/docs" not in README
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_the_quick_start_commands_use_separate_environments() -> None:
    serve, test = quickstart()
    venv = re.compile(r"python3 -m venv (\S+)")
    (serve_venv,) = venv.findall(serve)
    (test_venv,) = venv.findall(test)
    assert serve_venv != test_venv
    assert f"{serve_venv}/" not in test, "the test command must not install into the service's"
    assert "cbexec serve" in serve and "pytest" in test


def test_the_suite_keeps_its_sandbox_uids_apart_from_a_default_service() -> None:
    service = Settings().sandbox_uid_base
    # Each executor uses base + cell, two cells per slot: far fewer than 1000.
    for base in DEFAULT_TEST_UID_BASES:
        assert service >= base + 1000 or service + 1000 <= base
