"""A callback's process frozen from outside by a cgroup v1 freezer ends as a stopped one would.

Probe 159: frozen while it ran, a callback outlived its wall limit with no answer, its slot
taken and the executor's stop hung, until a thaw; a frozen prepared child was handed the
next run, which ended WALL_TIMEOUT blamed on a callback that never ran. A v1-frozen task
shows ``D``, not SIGSTOP's ``T``, and cannot die while frozen, not even of a SIGKILL.

Each test puts the processes in a freezer cgroup of its own (as an admin or a tool would)
and freezes it; it skips where the host has no v1 freezer hierarchy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import grpc
import psutil
import pytest

from executor.api import edge
from executor.sandbox import cgroup, ending, freezer, stuck_slots
from supervisor_client import RetryableError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.processes import sandboxed_processes
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults

FREEZER: Final = Path("/sys/fs/cgroup/freezer")
PIDS: Final = Path("/sys/fs/cgroup/pids")
SUCCEEDED = executor_pb2.Outcome.OUTCOME_SUCCEEDED
WALL_TIMEOUT = executor_pb2.Outcome.OUTCOME_WALL_TIMEOUT
KILLED = executor_pb2.Outcome.OUTCOME_KILLED
SLEEPS: Final = "import time\ntime.sleep(100)\n"


class Freezer:
    """A freezer cgroup of the test's own: freeze processes in it, thaw them, remove it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def freeze(self, pids: list[int]) -> None:
        for pid in pids:
            (self.path / "cgroup.procs").write_text(str(pid))
        (self.path / "freezer.state").write_text("FROZEN")
        deadline = time.monotonic() + 5
        while (self.path / "freezer.state").read_text().strip() != "FROZEN":
            assert time.monotonic() < deadline, "the freezer did not freeze"
            time.sleep(0.01)

    def thaw(self) -> None:
        (self.path / "freezer.state").write_text("THAWED")

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]


@contextlib.contextmanager
def freezer_cgroup() -> Iterator[Freezer]:
    if not (FREEZER / "cgroup.procs").exists():
        pytest.skip(f"no cgroup v1 freezer hierarchy at {FREEZER} (a cgroup v2 host?)")
    if os.geteuid() != 0:
        pytest.skip("only root can make a freezer cgroup")
    path = FREEZER / f"fx-test-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    made = Freezer(path)
    try:
        yield made
    finally:
        made.thaw()
        for pid in made.pids():
            with contextlib.suppress(OSError):
                (FREEZER / "cgroup.procs").write_text(str(pid))
        deadline = time.monotonic() + 5
        while path.exists():
            try:
                path.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture(params=["zygote", "cold"])
async def one_slot(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(tmp_path / "data", launcher=request.param, max_concurrent=1)
    async with running_stack(settings) as stack:
        yield stack


def alive(process: psutil.Process) -> bool:
    """Whether it still runs (a zombie has ended: it is not ours to reap)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def execute(stack: Stack, code: str, **limits: float) -> Any:
    (job,) = stack.supervisor.submit([{"name": "frozen", "user": "alice"}])
    return await stack.client.execute_callback(
        language="python", code=code, job=job, limits=limits or None
    )


async def started_callback(stack: Stack, code: str, wall_seconds: float) -> asyncio.Task[Any]:
    """A run of ``code`` whose callback's processes exist (and have had a moment to start)."""
    running = asyncio.create_task(execute(stack, code, wall_seconds=wall_seconds))
    assert await eventually(sandboxed_processes, timeout_s=5)
    await asyncio.sleep(0.3)
    return running


async def test_a_frozen_callback_ends_at_its_wall_limit(one_slot: Stack) -> None:
    await execute(one_slot, "pass")  # the zygote started: the run below starts at once
    with freezer_cgroup() as held:
        running = await started_callback(one_slot, SLEEPS, wall_seconds=1)
        frozen = sandboxed_processes()
        held.freeze([p.pid for p in frozen])
        began = time.monotonic()

        response = await asyncio.wait_for(running, timeout=15)

        assert response.outcome == WALL_TIMEOUT, response.failure.message
        assert time.monotonic() - began < 3  # its limit, the grace: not the freeze's end
        assert not held.pids()  # let out of it to be killed
        assert not any(alive(process) for process in frozen)
    # Its slot is free again.
    assert (await execute(one_slot, "print('next')")).stdout == "next\n"


async def test_a_frozen_prepared_child_is_replaced_not_handed_the_run(one_slot: Stack) -> None:
    runner = one_slot.running.runner
    await execute(one_slot, "pass")
    (prepared,) = await runner.prepared_pids()
    family = [psutil.Process(prepared), *psutil.Process(prepared).children(recursive=True)]
    with freezer_cgroup() as held:
        held.freeze([p.pid for p in family])
        began = time.monotonic()

        response = await asyncio.wait_for(execute(one_slot, "print('ran')", wall_seconds=5), 15)

        assert response.outcome == SUCCEEDED, response.failure.message
        assert response.stdout == "ran\n"
        assert time.monotonic() - began < 3
        assert await eventually(lambda: not any(alive(member) for member in family))


async def test_a_callback_that_cannot_be_thawed_is_answered_and_the_stop_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As where the executor may not move it (not root) or the host freezes otherwise.
    monkeypatch.setattr(freezer, "thaw", lambda pid: None)
    settings = stack_settings(tmp_path / "data", launcher="zygote", max_concurrent=1)
    with freezer_cgroup() as held:
        stopped = False
        stack_context = running_stack(settings)
        stack = await stack_context.__aenter__()
        try:
            await execute(stack, "pass")
            running = await started_callback(stack, SLEEPS, wall_seconds=1)
            held.freeze([p.pid for p in sandboxed_processes()])
            began = time.monotonic()
            with caplog.at_level(logging.WARNING, logger=ending.__name__):
                response = await asyncio.wait_for(running, timeout=15)

            assert response.outcome == WALL_TIMEOUT, response.failure.message
            assert time.monotonic() - began < 1 + 0.3 + ending.KILL_WAIT_S + 1.5
            (warning,) = [r.getMessage() for r in caplog.records if "SIGKILL" in r.getMessage()]
            assert "frozen by the cgroup freezer" in warning
            assert "its slot stays taken" in warning
            assert stack.running.dispatcher.active == 1  # held until the process ends

            cgroups = stack.running.options.cgroups
            assert cgroups is not None
            began = time.monotonic()
            stopped = True
            await asyncio.wait_for(stack_context.__aexit__(None, None, None), timeout=10)
            assert time.monotonic() - began < 5
        finally:
            held.thaw()
            if not stopped:
                await stack_context.__aexit__(None, None, None)
    # The executor's cell, kept by the frozen process, goes once it has died.
    assert await eventually(lambda: not sandboxed_processes(), timeout_s=5)
    cgroups.close()


async def test_every_slot_held_by_a_process_that_cannot_be_thawed_is_not_serving_until_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Its one slot held until the frozen process ends, the executor ran nothing, yet
    # said SERVING: a load balancer or a fleet client kept sending it Execute calls,
    # which queued until their deadlines.
    monkeypatch.setattr(freezer, "thaw", lambda pid: None)
    settings = stack_settings(tmp_path / "data", launcher="zygote", max_concurrent=1)
    async with running_stack(settings) as stack:
        with freezer_cgroup() as held:
            await execute(stack, "pass")
            running = await started_callback(stack, SLEEPS, wall_seconds=1)
            frozen = sandboxed_processes()
            held.freeze([p.pid for p in frozen])
            with caplog.at_level(logging.INFO, logger=stuck_slots.__name__):
                response = await asyncio.wait_for(running, timeout=15)
                assert response.outcome == WALL_TIMEOUT, response.failure.message

                assert await stack.client.health() == "NOT_SERVING"
                for service in edge.SERVICES:
                    assert await stack.client.health(service) == "NOT_SERVING"
                problem = (await stack.client.get_metrics()).slots_problem
                assert problem.startswith(
                    "every slot (1) is held by a killed process that has not ended (process "
                ), problem
                assert f"frozen by the cgroup freezer {held.path}" in problem
                began = time.monotonic()
                with pytest.raises(RetryableError) as refused:
                    await execute(stack, "print('queued')")
                assert time.monotonic() - began < 1  # at once, not at a deadline
                assert refused.value.code == grpc.StatusCode.UNAVAILABLE
                assert problem in refused.value.details
                assert "the executor runs nothing until one ends" in refused.value.details
                # A fired callback waits in its durable queue, unrun, as for a storage problem.
                fired = {"triggers": "done-job-self", "language": "python", "code": "pass"}
                await stack.client.register_job({"id": 900, "name": "f", "callbacks": [fired]})
                await stack.client.publish_event(name="complete", type="job", job_id=900)
                await asyncio.sleep(0.3)  # its first tries, refused
                assert (await stack.client.get_metrics()).firings_queued == 1
                said = [r for r in caplog.records if r.name == stuck_slots.__name__]
                (warning,) = [r.getMessage() for r in said if r.levelno == logging.WARNING]
                assert warning == (
                    f"{problem}: health is NOT_SERVING and Execute is refused until one ends"
                )

                held.thaw()
                assert await eventually(lambda: not any(alive(p) for p in frozen), timeout_s=5)

                async def serving() -> bool:
                    return await stack.client.health() == "SERVING"

                assert await eventually(serving, timeout_s=5), "still NOT_SERVING after its end"
                for service in edge.SERVICES:
                    assert await stack.client.health(service) == "SERVING"
                assert (await stack.client.get_metrics()).slots_problem == ""

                async def fired_ran() -> bool:
                    return (await stack.client.get_metrics()).firings_queued == 0

                assert await eventually(fired_ran, timeout_s=10)
                (run,) = (await stack.client.list_runs(job_id=900)).runs
                assert run.outcome == SUCCEEDED
            (info,) = [r for r in caplog.records if r.name == stuck_slots.__name__][1:]
            assert info.levelno == logging.INFO and "a slot is free again" in info.getMessage()
            assert (await execute(stack, "print('next')")).stdout == "next\n"


@pytest.mark.parametrize("thawable", [True, False])
def test_the_start_up_sweep_thaws_a_dead_executors_frozen_process_or_says_why_it_stays(
    thawable: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # After a kill -9 of an executor whose callback was frozen, the next start's sweep
    # left that pool's cgroups in place, silently, until the thaw.
    if not (PIDS / "cgroup.procs").exists():
        pytest.skip(f"no cgroup v1 pids hierarchy at {PIDS}")
    if not thawable:  # as where the executor may not move it (not root)
        monkeypatch.setattr(freezer, "thaw", lambda pid: None)
    gone = subprocess.Popen(["true"])
    gone.wait()
    # A root of the test's own: other executors' sweeps look only at the hierarchy's.
    root = PIDS / f"fx-test-{os.getpid()}-sweep"
    cell = root / f"{cgroup.PREFIX}{gone.pid}" / "cell-0"
    cell.mkdir(parents=True)
    frozen = subprocess.Popen(["sleep", "300"])
    try:
        (cell / "cgroup.procs").write_text(str(frozen.pid))
        with freezer_cgroup() as held:
            held.freeze([frozen.pid])
            with caplog.at_level(logging.WARNING, logger=cgroup.__name__):
                cgroup._remove_stale(root)
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            if thawable:
                assert not cell.parent.exists()
                assert warnings == []
            else:
                assert cell.exists()
                (warning,) = warnings
                assert "could not all be removed" in warning
                assert f"{cell}: Device or resource busy" in warning
                assert f"process {frozen.pid} frozen by the cgroup freezer {held.path}" in warning
        assert frozen.wait(timeout=5) == -signal.SIGKILL  # its SIGKILL, once thawed
        cgroup._remove_stale(root)  # the next start's sweep
        assert not cell.parent.exists()
    finally:
        frozen.kill()
        frozen.wait()
        for leftover in (cell, cell.parent, root):
            with contextlib.suppress(OSError):
                leftover.rmdir()
