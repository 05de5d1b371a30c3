"""Children prepared ahead: taken when they fit, discarded when they do not, never shared between runs.

One slot, so every run lands in the same cells; both launchers. A spy on the real
spawner counts the children started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from executor.model import Language
from executor.runtimes.child import child_runtime
from executor.sandbox.process import SandboxRunner
from supervisor_client import ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.frames import refuse_calls, start_frame
from tests.helpers.processes import sandboxed_processes
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

SUCCEEDED = executor_pb2.Outcome.OUTCOME_SUCCEEDED


@pytest.fixture(params=["zygote", "cold"])
async def one_slot(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(tmp_path / "data", launcher=request.param, max_concurrent=1)
    async with running_stack(settings) as stack:
        yield stack


class SpawnCounter:
    """Counts the children the real spawner starts."""

    def __init__(self, runner: SandboxRunner) -> None:
        self.count = 0
        spawn = runner.spawner.spawn

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await spawn(*args, **kwargs)

        runner.spawner.spawn = counted  # type: ignore[method-assign]


async def until_ended(pid: int, timeout_s: float = 5.0) -> None:
    """Wait until ``pid`` has ended (a zombie counts: it is not ours to reap)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} did not end")


async def run(stack: Stack, code: str, language: str = "python", **limits: float) -> Any:
    (job,) = stack.supervisor.submit([{"name": "prep", "user": "alice"}])
    response = await stack.client.execute_callback(
        language=language, code=code, job=job, limits=limits or None
    )
    assert response.outcome == SUCCEEDED, (response.failure.message, response.stderr[-500:])
    return response


async def test_a_run_with_the_same_limits_takes_the_prepared_child(one_slot: Stack) -> None:
    runner = one_slot.running.runner
    await run(one_slot, "pass")
    (prepared,) = await runner.prepared_pids()
    spawns = SpawnCounter(runner)

    await run(one_slot, "print('second')")
    next_prepared = await runner.prepared_pids()

    assert spawns.count == 1, "the run started a child instead of taking the prepared one"
    assert (
        not psutil.pid_exists(prepared) or psutil.Process(prepared).status() == psutil.STATUS_ZOMBIE
    )
    assert next_prepared != [prepared]


async def test_other_limits_discard_the_prepared_child(one_slot: Stack) -> None:
    runner = one_slot.running.runner
    await run(one_slot, "pass")
    (prepared,) = await runner.prepared_pids()
    spawns = SpawnCounter(runner)

    await run(one_slot, "pass", cpu_seconds=3)
    await runner.prepared_pids()

    assert spawns.count == 2  # its own child, then the next one prepared with its limits
    assert (
        not psutil.pid_exists(prepared) or psutil.Process(prepared).status() == psutil.STATUS_ZOMBIE
    )


async def test_each_child_of_a_cell_is_confined_by_its_own_runs_limits(one_slot: Stack) -> None:
    """A cell's launch spec (and a zygote's encoding of it) is reused only while it fits."""
    cpu_limit = "import resource; print(resource.getrlimit(resource.RLIMIT_CPU)[0])"

    first = await run(one_slot, cpu_limit)
    other = await run(one_slot, cpu_limit, cpu_seconds=3)
    again = await run(one_slot, cpu_limit)

    assert int(other.stdout) < int(first.stdout)
    assert again.stdout == first.stdout


async def test_another_wall_clock_limit_keeps_the_prepared_child(one_slot: Stack) -> None:
    """The wall clock is the executor's to enforce: nothing in the child depends on it."""
    runner = one_slot.running.runner
    await run(one_slot, "pass")
    await runner.prepared_pids()
    spawns = SpawnCounter(runner)

    await run(one_slot, "pass", wall_seconds=7)
    await runner.prepared_pids()

    assert spawns.count == 1, "the run started a child instead of taking the prepared one"


async def test_each_language_has_its_own_prepared_child(one_slot: Stack) -> None:
    runner = one_slot.running.runner
    await run(one_slot, "pass")
    await run(one_slot, "1;", language="perl")
    assert len(await runner.prepared_pids()) == 2
    spawns = SpawnCounter(runner)

    await run(one_slot, "pass")
    await run(one_slot, "1;", language="perl")
    await runner.prepared_pids()

    assert spawns.count == 2  # only the replacements


async def test_a_prepared_child_that_died_is_replaced(one_slot: Stack) -> None:
    runner = one_slot.running.runner
    await run(one_slot, "pass")
    (prepared,) = await runner.prepared_pids()
    os.kill(prepared, signal.SIGKILL)
    await until_ended(prepared)  # died while idle, not at the moment the run takes it

    response = await run(one_slot, "print('still fine')")

    assert response.stdout == "still fine\n"


async def test_nothing_of_a_run_reaches_the_next_one(one_slot: Stack) -> None:
    first = await run(
        one_slot,
        "import os\nopen('left-behind', 'w').write('x')\nos.environ['LEAK'] = '1'\n"
        "print(os.getcwd())",
    )

    second = await run(
        one_slot, "import os\nprint(os.getcwd(), sorted(os.listdir('.')), os.environ.get('LEAK'))"
    )

    workdir, listing, leak = second.stdout.split(maxsplit=2)
    assert workdir != first.stdout.strip()
    assert listing == "[]" and leak.strip() == "None"


@pytest.mark.parametrize("left", ["deadline", "cancel"])
async def test_a_run_its_caller_left_still_leaves_its_cell_a_prepared_child(
    one_slot: Stack, left: str
) -> None:
    # It left none: each cancel or short deadline took a cell's head start away for
    # every later caller (probe 56).
    runner = one_slot.running.runner
    await run(one_slot, "pass")
    (prepared,) = await runner.prepared_pids()
    (job,) = one_slot.supervisor.submit([{"name": "left", "user": "alice"}])
    call = one_slot.client.execute_callback(
        language="python",
        code="import time\ntime.sleep(30)",
        job=job,
        timeout=1.0 if left == "deadline" else None,
    )
    if left == "deadline":
        with pytest.raises(ExecutorRpcError) as late:
            await call
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        calling = asyncio.create_task(call)
        assert await eventually(lambda: runner.prepared == 0, 10.0)  # taken by the run
        await asyncio.sleep(0.2)  # running its callback
        calling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await calling
    assert await eventually(lambda: runner.prepared == 1, 10.0)
    (again,) = await runner.prepared_pids()
    assert again != prepared
    spawns = SpawnCounter(runner)
    await run(one_slot, "pass")
    await runner.prepared_pids()  # the one after it
    assert spawns.count == 1, "the next run started a child of its own"


async def test_stopping_the_executor_ends_the_prepared_children(tmp_path: Path) -> None:
    async with running_stack(stack_settings(tmp_path / "data", max_concurrent=2)) as stack:
        await run(stack, "pass")
        await run(stack, "pass")
        prepared = await stack.running.runner.prepared_pids()
        assert len(prepared) == 2

    assert not [
        pid
        for pid in prepared
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]


async def test_a_prepared_childs_warm_up_leaves_nothing_in_the_callbacks_namespace(
    one_slot: Stack,
) -> None:
    await run(one_slot, "pass")
    await one_slot.running.runner.prepared_pids()  # the next one has warmed up

    response = await run(one_slot, "print(sorted(n for n in globals() if not n.startswith('__')))")

    assert response.stdout == "['qb']\n"


def open_files() -> set[str]:
    """What this process's fds refer to (``pipe:[inode]``, ``socket:[inode]``, paths)."""
    targets = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            targets.add(os.readlink(f"/proc/self/fd/{fd}"))
    return targets


async def test_a_run_cancelled_twice_still_ends_its_child_and_closes_its_ends(
    one_slot: Stack,
) -> None:
    # A server that stops while a cancelled run unwinds cancels it a second time; the
    # run's cleanup must still kill and reap its child and close the pipes and bridge.
    runner = one_slot.running.runner
    await run(one_slot, "pass")  # the zygote is up
    assert one_slot.running.recorder is not None and one_slot.running.recorder.outbox is not None
    await one_slot.running.recorder.outbox.flush(5.0)  # its connection to the supervisor is up too
    before = open_files()
    # Other limits: the run starts a child of its own, whose ends are not in ``before``.
    limits = dataclasses.replace(one_slot.settings.default_limits, cpu_seconds=7)
    running = asyncio.create_task(
        runner.run(
            runtime=child_runtime(Language.PYTHON),
            limits=limits,
            slot=0,
            start=start_frame("import time\ntime.sleep(60)"),
            on_call=refuse_calls,
        )
    )
    prepared = {p.pid for p in sandboxed_processes()}
    while not (children := {p.pid for p in sandboxed_processes()} - prepared):  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # polling /proc: no event tells when a child appears
    await asyncio.sleep(0.2)  # the child has taken its start frame

    running.cancel()
    await asyncio.sleep(0)  # into its cleanup, which waits for the child's exit
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running

    # Reaped, not only ended (no zombie left for later); the cleanup may finish after
    # the task has given up.
    assert await eventually(lambda: not any(psutil.pid_exists(pid) for pid in children), 10.0)
    assert await eventually(lambda: open_files() <= before, 10.0), open_files() - before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_to_an_idle_prepared_child_leaves_it_ready_for_its_run(
    one_slot: Stack, signum: int
) -> None:
    # Found by a tester: an operator's pkill of a cell's uid ended or broke the idle
    # child, and the run it was prepared for failed without running its code.
    runner = one_slot.running.runner
    await run(one_slot, "pass")
    (prepared,) = await runner.prepared_pids()
    os.kill(prepared, signum)
    await asyncio.sleep(0.3)

    response = await run(one_slot, "print('ran')")

    assert response.stdout == "ran\n"


async def test_a_stopped_prepared_child_is_replaced_not_handed_the_run(one_slot: Stack) -> None:
    # Found by a tester: an idle child stopped from outside (SIGSTOP of the cell's uid, a
    # freezer, a debugger) was handed the next run, which never read its code and ended
    # WALL_TIMEOUT after its whole limit, blamed on the callback.
    runner = one_slot.running.runner
    await run(one_slot, "pass")
    (prepared,) = await runner.prepared_pids()
    family = [psutil.Process(prepared), *psutil.Process(prepared).children(recursive=True)]
    for process in family:  # a cold child's shim and the callback's process it waits on
        process.suspend()
    # Stopped before the run comes (a stop while the run takes the child is not this case).
    assert await eventually(
        lambda: all(p.status() == psutil.STATUS_STOPPED for p in family), timeout_s=5
    )
    started = asyncio.get_running_loop().time()

    response = await run(one_slot, "print('ran')", wall_seconds=5)

    assert response.stdout == "ran\n"
    assert asyncio.get_running_loop().time() - started < 3
    for process in family:
        await until_ended(process.pid)  # discarded
