"""`cbexec farm wait`'s own loop: a --wait-timeout past what one WaitJobs waits."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from executor.bounds import MAX_WAIT_S
from executor.cli.farm import _waited
from supervisor_client.qbcallback.v1 import farm_pb2

pytestmark = pytest.mark.unit


class Farm:
    """Answers each WaitJobs at once: not done until the third."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def wait_jobs(self, job_ids: list[int], *, wait_seconds: float) -> Any:
        self.asked.append(wait_seconds)
        return farm_pb2.WaitJobsResponse(done=len(self.asked) == 3)


async def test_a_wait_longer_than_one_waitjobs_asks_again_an_hour_at_a_time() -> None:
    # Probe 179: --wait-timeout 5000 was sent whole and refused by the executor.
    farm = Farm()
    args = argparse.Namespace(job_ids=[7], wait_timeout=9000.0, address="x")
    reply = await _waited(farm, args)  # type: ignore[arg-type]
    assert reply.done
    # Answered at once here, so the hours left do not go down: each asks for the most.
    assert farm.asked == [MAX_WAIT_S] * 3


async def test_a_wait_within_one_waitjobs_is_answered_by_it_done_or_not() -> None:
    farm = Farm()
    args = argparse.Namespace(job_ids=[7], wait_timeout=60.0, address="x")
    reply = await _waited(farm, args)  # type: ignore[arg-type]
    assert not reply.done
    assert len(farm.asked) == 1 and 59 < farm.asked[0] <= 60
