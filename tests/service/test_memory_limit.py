"""A run's memory limit is the cell's memory cgroup's limit, whatever the cell's last run asked for.

One slot, so every run lands in the same cells; both launchers, both languages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

Outcome = executor_pb2.Outcome
MIB = 1 << 20
PRINT_OK = {"python": "print('ok')", "perl": "print qq(ok\\n);"}


@pytest.fixture(params=["zygote", "cold"])
async def one_slot(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(tmp_path / "data", launcher=request.param, max_concurrent=1)
    async with running_stack(settings) as stack:
        cgroups = stack.running.options.cgroups
        if cgroups is None or "memory" not in cgroups.controllers:
            pytest.skip("no writable memory cgroup: RLIMIT_AS bounds each process only")
        yield stack


async def run(stack: Stack, language: str, **limits: float) -> Any:
    (job,) = stack.supervisor.submit([{"name": "mem", "user": "alice"}])
    return await stack.client.execute_callback(
        language=language, code=PRINT_OK[language], job=job, limits=limits or None
    )


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_limit_too_small_to_start_in_ends_every_run_memory_limit(
    one_slot: Stack, language: str
) -> None:
    # Each tiny run follows one under the default 512 MiB (the cell's limit until then,
    # its next child prepared for it) or another tiny one: neither may decide it. Before
    # the fix, cgroup v1 refused the tiny limit and the run went on under 512 MiB.
    runs: list[dict[str, float]] = [
        {},
        {"memory_bytes": 1000},
        {"memory_bytes": 1000},
        {},
        {"memory_bytes": 4096},
        {"memory_bytes": 64 * MIB},
    ]
    for limits in runs:
        response = await run(one_slot, language, **limits)
        if limits.get("memory_bytes", MIB) < MIB:
            assert response.outcome == Outcome.OUTCOME_MEMORY_LIMIT, (
                limits,
                Outcome.Name(response.outcome),
                response.stdout,
            )
            assert response.failure.message == (
                f"the callback never ran: its memory limit of {limits['memory_bytes']} bytes "
                "is less than its process needs to start"
            )
            assert response.stdout == ""
        else:
            assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
            assert response.stdout == "ok\n"
