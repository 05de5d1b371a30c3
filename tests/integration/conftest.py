"""Fixtures of the real-children tests: a sandbox runner each way a child starts, a farm."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from executor.sandbox.process import SandboxOptions, SandboxRunner
from executor.sandbox.spawners import ColdSpawner, Spawner, ZygoteSpawner
from supervisor_client.reference import ReferenceSupervisor


@pytest.fixture(params=["cold", "zygote"])
async def runner(request: pytest.FixtureRequest) -> AsyncIterator[SandboxRunner]:
    """Children started cold, then forked from their zygote (no cgroups or private network)."""
    spawner: Spawner = (
        ColdSpawner(sys.executable) if request.param == "cold" else ZygoteSpawner(sys.executable)
    )
    options = SandboxOptions(
        site_paths=(), pid_namespace=True, network=True, grace_s=0.5, cgroups=None
    )
    try:
        yield SandboxRunner(options, spawner)
    finally:
        await spawner.close()


@pytest.fixture
def supervisor() -> Iterator[ReferenceSupervisor]:
    with ReferenceSupervisor() as store:
        yield store
