"""Every child, started cold or forked from its zygote, Python or Perl, has its bridge on fd 3."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from typing import Any

import pytest

from executor.child.protocol import BRIDGE_FD, CallFrame, ReplyFrame
from executor.model import Language, Outcome
from executor.runtimes.child import child_runtime
from executor.sandbox.process import SandboxRunner
from executor.sandbox.spawners import ChildHandle
from tests.helpers.frames import start_frame
from tests.helpers.supervisor_port import LIMITS

pytestmark = pytest.mark.integration

# The open fds (the last one: the listing's own handle) and what fd 3 is.
LOOK = {
    "python": (
        "import os\n"
        "fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))\n"
        "print(fds, os.readlink('/proc/self/fd/3').split(':')[0])\n"
    ),
    "perl": (
        "opendir(my $d, '/proc/self/fd') or die $!;\n"
        "my @fds = sort { $a <=> $b } grep { /\\A[0-9]+\\z/ } readdir $d;\n"
        "my ($kind) = split /:/, readlink('/proc/self/fd/3');\n"
        "print '[', join(', ', @fds), '] ', $kind, \"\\n\";\n"
    ),
}


def hold_loop_after_spawn(runner: SandboxRunner, after_s: float, hold_s: float) -> None:
    """Hold the event loop for ``hold_s``, ``after_s`` after the next child is started.

    Timed from the child's start, not the test's: a zygote's first start can take longer
    than ``after_s`` on a loaded machine, and the hold would come before the run.
    """
    spawn = runner.spawner.spawn

    async def spawn_then_hold(*args: Any, **kwargs: Any) -> ChildHandle:
        handle = await spawn(*args, **kwargs)
        asyncio.get_running_loop().call_later(after_s, time.sleep, hold_s)
        return handle

    runner.spawner.spawn = spawn_then_hold  # type: ignore[method-assign]


async def no_call(frame: object) -> ReplyFrame:
    raise AssertionError(f"no qb call expected: {frame}")


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_the_bridge_is_fd_3_and_nothing_else_is_open(
    runner: SandboxRunner, language: str
) -> None:
    if language == "perl" and shutil.which("perl") is None:
        pytest.skip("perl is not installed")

    result = await runner.run(
        runtime=child_runtime(Language(language)),
        limits=LIMITS,
        slot=0,
        start=start_frame(LOOK[language], language),
        on_call=no_call,
    )

    assert result.outcome is Outcome.SUCCEEDED, (result.failure, result.stderr)
    # stdio, the bridge, and the handle that listed them.
    assert result.stdout == f"[0, 1, 2, {BRIDGE_FD}, {BRIDGE_FD + 1}] socket\n"


async def test_an_end_within_the_wall_limit_is_no_timeout_when_the_loop_was_held_up(
    runner: SandboxRunner,
) -> None:
    # The callback ends at ~0.3 s; the event loop is held from 0.1 s to past the 1 s
    # deadline (as another run's large result can hold it). The done frame waits unread.
    hold_loop_after_spawn(runner, 0.1, 1.5)
    start = start_frame("import time\ntime.sleep(0.3)")

    result = await runner.run(
        runtime=child_runtime(Language.PYTHON),
        limits=dataclasses.replace(LIMITS, wall_seconds=1),
        slot=0,
        start=start,
        on_call=no_call,
    )

    assert result.outcome is Outcome.SUCCEEDED, result.failure


async def test_a_qb_call_the_held_up_executor_answers_after_the_deadline_is_no_timeout(
    runner: SandboxRunner,
) -> None:
    # The callback sends a qb call at ~0.3 s and waits for its answer; the executor's
    # event loop is held from 0.1 s to past the 1 s deadline (its process stopped, say).
    # The wait was the executor's, not the callback's: it ends as it would have.
    hold_loop_after_spawn(runner, 0.1, 1.5)
    calls: list[str] = []

    async def answer(frame: CallFrame) -> ReplyFrame:
        calls.append(frame["fn"])
        return {"type": "reply", "id": frame["id"], "ok": True, "value": 1}

    result = await runner.run(
        runtime=child_runtime(Language.PYTHON),
        limits=dataclasses.replace(LIMITS, wall_seconds=1),
        slot=0,
        start=start_frame("import time\ntime.sleep(0.3)\nqb.block(1)\nprint('done')"),
        on_call=answer,
    )

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert (calls, result.stdout) == (["block"], "done\n")
    assert result.usage.wall_seconds >= 1.5  # the time the executor saw, its hold included


async def test_a_callback_still_running_after_the_held_up_time_is_a_timeout(
    runner: SandboxRunner,
) -> None:
    # The deadline moves on by the hold (~1.25 s measured) and no more.
    hold_loop_after_spawn(runner, 0.1, 1.5)

    result = await runner.run(
        runtime=child_runtime(Language.PYTHON),
        limits=dataclasses.replace(LIMITS, wall_seconds=1),
        slot=0,
        start=start_frame("import time\ntime.sleep(30)"),
        on_call=no_call,
    )

    assert result.outcome is Outcome.WALL_TIMEOUT
    assert 2.0 <= result.usage.wall_seconds < 5
