"""Fixtures of the hostile suite: an arena on both launch paths, or on the warm one only.

Each arena also runs under a widened ``universal`` policy (``WIDENED``: binds, a group,
a umask, an environment variable, the attacker's user listed), so every attack is
tried against what that policy grants too: it must still hold all the rest.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_UID_BASE, Stack, running_stack, stack_settings
from tests.hostile.harness import ATTACKER, Arena

# The widened policy's group (no one else's on this host) and its read-write target.
GRANTED_GROUP = TEST_UID_BASE + 901
GRANTED_TARGET = "/tmp/granted"


def widened_universal(tmp_path: Path) -> dict[str, Any]:
    """A ``[policies.universal]`` table granting a read-write and a read-only directory."""
    rw, ro = tmp_path / "granted-rw", tmp_path / "granted-ro"
    for directory in (rw, ro):
        directory.mkdir(exist_ok=True)
    (ro / "notes.txt").write_text("granted to read\n")
    os.chown(rw, 0, GRANTED_GROUP)
    rw.chmod(0o2770)
    return {
        "binds": [
            {"path": str(rw), "target": GRANTED_TARGET, "mode": "rw"},
            {"path": str(ro), "mode": "ro"},
        ],
        "group": GRANTED_GROUP,
        "umask": "007",
        "env": {"GRANTED": "yes"},
        "users": [ATTACKER],
    }


@pytest.fixture(params=["zygote", "cold", "widened"])
async def arena(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Arena]:
    """For the process-escape cases: the zygote, the cold launcher, and a widened policy."""
    async with _arena(str(request.param), tmp_path) as arena:
        yield arena


@pytest.fixture(params=["job", "widened"])
async def arena_warm(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Arena]:
    """For cases that are not about how children start: the job and a widened policy."""
    async with _arena(str(request.param), tmp_path) as arena:
        yield arena


class _arena:  # noqa: N801 - used like a function, as contextlib's helpers are
    def __init__(self, kind: str, tmp_path: Path) -> None:
        launcher = "cold" if kind == "cold" else "zygote"
        overrides: dict[str, Any] = {"launcher": launcher}
        self._policy = ""
        if kind == "widened":
            if os.geteuid() != 0:
                pytest.skip("a policy with binds needs the hardened tier (root)")
            overrides["policies"] = {"universal": widened_universal(tmp_path)}
            self._policy = "universal"
        self._running = running_stack(stack_settings(tmp_path / "data", **overrides))
        self._tmp_path = tmp_path

    async def __aenter__(self) -> Arena:
        stack: Stack = await self._running.__aenter__()
        return Arena(stack, self._tmp_path, policy=self._policy)

    async def __aexit__(self, *exc: object) -> None:
        await self._running.__aexit__(None, None, None)


@pytest.fixture(params=["python", "perl"])
def language(request: pytest.FixtureRequest) -> str:
    return str(request.param)
