"""Health's reasons to be NOT_SERVING, combined at the edge: one's end hides no other.

The storage that cannot record results and every slot kept by a killed process that
has not ended (``StuckSlots``) each keep health NOT_SERVING; SERVING comes back only
once neither does, and never after a stop has begun.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest
from grpc_health.v1 import health_pb2

from executor.api.edge import SERVICES, Edge
from executor.api.health import HealthService

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Problem:
    """A reason health follows, as ``StorageHealth`` and ``StuckSlots`` are."""

    def __init__(self, problem: str = "") -> None:
        self.problem = problem
        self.listeners: list[Callable[[str], None]] = []

    def says(self, problem: str) -> None:
        self.problem = problem
        for listener in self.listeners:
            listener(problem)


def serving_edge() -> Edge:
    return Edge(cast(Any, None), 0, HealthService(), cast(Any, None))


async def statuses(edge: Edge) -> set[int]:
    """Every name's status once what the problems said has reached the health service."""
    await asyncio.sleep(0.01)  # their listeners hand it to the loop (any thread may call)
    answer = await edge.health.List(cast(Any, None), cast(Any, None))
    assert set(answer.statuses) == {"", *SERVICES}
    return {status.status for status in answer.statuses.values()}


async def followed(*problems: Problem) -> Edge:
    edge = serving_edge()
    edge.set_serving(True)  # as the server starts
    for name, problem in zip(("storage", "slots"), problems, strict=True):
        edge.follow(problem, name)
    return edge


@pytest.mark.parametrize("storage_first", [True, False])
@pytest.mark.parametrize("storage_ends_first", [True, False])
async def test_serving_again_only_once_both_problems_have_ended(
    storage_first: bool, storage_ends_first: bool
) -> None:
    storage, slots = Problem(), Problem()
    edge = await followed(storage, slots)
    assert await statuses(edge) == {SERVING}
    first, second = (storage, slots) if storage_first else (slots, storage)
    first.says("the first problem")
    assert await statuses(edge) == {NOT_SERVING}
    second.says("the second problem")
    assert await statuses(edge) == {NOT_SERVING}

    ends_first, ends_last = (storage, slots) if storage_ends_first else (slots, storage)
    ends_first.says("")
    assert await statuses(edge) == {NOT_SERVING}  # the other holds
    ends_last.says("")
    assert await statuses(edge) == {SERVING}


async def test_a_problem_met_before_it_was_followed_is_not_serving_at_once() -> None:
    edge = await followed(Problem("a full disk"), Problem())
    assert await statuses(edge) == {NOT_SERVING}


async def test_no_problems_end_serves_again_once_a_stop_has_begun() -> None:
    storage, slots = Problem(), Problem("every slot (1) is held ...")
    edge = await followed(storage, slots)
    storage.says("a full disk")
    await edge.stop_serving()
    storage.says("")
    slots.says("")
    assert await statuses(edge) == {NOT_SERVING}


async def test_health_changes_in_the_same_step_as_the_problem_it_follows() -> None:
    # Said on the loop (as StorageHealth and StuckSlots say theirs), the problem and the
    # status change together: a GetMetrics and a Check between them disagreed for 10-35
    # ms, /healthz 200 SERVING with a storage_problem (probe 175, F4).
    storage, slots = Problem(), Problem()
    edge = await followed(storage, slots)
    storage.says("a full disk")
    assert await statuses_now(edge) == {NOT_SERVING}
    storage.says("")
    assert await statuses_now(edge) == {SERVING}
    slots.says("every slot (1) is held ...")
    assert await statuses_now(edge) == {NOT_SERVING}


async def test_a_problem_said_on_another_thread_reaches_health_through_the_loop() -> None:
    storage = Problem()
    edge = await followed(storage, Problem())
    await asyncio.to_thread(storage.says, "a full disk")
    assert await statuses(edge) == {NOT_SERVING}


async def statuses_now(edge: Edge) -> set[int]:
    """Every name's status, with no turn of the loop since what the problems said."""
    # List awaits nothing: it answers in the caller's step.
    answer = await edge.health.List(cast(Any, None), cast(Any, None))
    return {status.status for status in answer.statuses.values()}
