"""A run's wall deadline moves on by the time the executor's own event loop was held up."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from executor import wall_deadline
from executor.wall_deadline import HELD_AFTER_S, TICK_S, WallDeadline


async def sleep_in(deadline: WallDeadline, stop_after_s: float | None = None) -> None:
    """Sleep in the deadline's scope (rescheduled to end ``stop_after_s`` in, as a stop does)."""
    loop = asyncio.get_running_loop()
    async with deadline.scope() as scope:
        if stop_after_s is not None:
            loop.call_later(stop_after_s, lambda: scope.reschedule(loop.time()))
        await asyncio.sleep(60)


async def wait_out(deadline: WallDeadline, stop_after_s: float | None = None) -> float:
    """Seconds until the deadline's scope expired."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        await sleep_in(deadline, stop_after_s)
    return loop.time() - began


async def test_a_deadline_nothing_holds_up_expires_on_time() -> None:
    waited = await wait_out(WallDeadline(0.4))

    assert 0.4 <= waited < 0.6


async def test_a_hold_of_the_loop_moves_the_deadline_on_by_its_length() -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, time.sleep, 1.0)  # past the 0.4 s deadline
    deadline = WallDeadline(0.4)

    waited = await wait_out(deadline)

    # Measured from the tick it made late: the hold less at most one tick.
    assert 1.0 - TICK_S <= deadline.held() <= 1.1
    assert 0.4 + 1.0 - TICK_S <= waited < 0.4 + 1.0 + 0.3


async def test_delays_below_the_threshold_are_the_runs_own() -> None:
    loop = asyncio.get_running_loop()
    for n in range(4):
        loop.call_later(0.05 + 0.3 * n, time.sleep, HELD_AFTER_S / 2)
    deadline = WallDeadline(1.0)

    waited = await wait_out(deadline)

    assert deadline.held() == 0.0
    assert waited < 1.3


async def test_holds_count_only_while_the_deadline_is_waited_on() -> None:
    deadline = WallDeadline(0.3)
    time.sleep(0.5)  # noqa: ASYNC251 - a hold before any wait: nothing measures it

    assert deadline.held() == 0.0
    assert await wait_out(deadline) < 0.1  # it had passed


async def test_a_reschedule_of_its_scope_ends_it_sooner() -> None:
    assert await wait_out(WallDeadline(30), stop_after_s=0.1) < 1


async def test_a_deadline_moves_on_by_its_own_wall_limit_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The floor lowered for the test: a 0.4 s limit is credited at most 0.4 s of a
    # 1 s hold (a callback that made the executor hold its loop would buy time so).
    monkeypatch.setattr(wall_deadline, "MIN_CREDIT_S", 0.0)
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, time.sleep, 1.0)
    deadline = WallDeadline(0.4)

    waited = await wait_out(deadline)

    assert deadline.held() == 0.4
    assert 1.0 <= waited < 1.3  # expired at once after the hold, past 0.4 + 0.4


class RunOutput:
    """Stands for a run's result (its output, up to 2 x 16 MiB): weakly referable."""


async def test_a_task_that_used_the_scope_is_freed_without_the_collector() -> None:
    # The scope's timer callback held the scope, the scope its task, the task its result:
    # each run's output stayed until the cyclic collector ran (32 MB a run, probe 85).
    async def run() -> RunOutput:
        async with WallDeadline(60).scope():
            await asyncio.sleep(0)
        return RunOutput()

    gc.disable()
    try:
        task = asyncio.create_task(run())
        freed = weakref.ref(await task)
        del task
        await asyncio.sleep(0)
        assert freed() is None
    finally:
        gc.enable()
