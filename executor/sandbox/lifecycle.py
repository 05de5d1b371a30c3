"""How a sandboxed run ends early: a stop with its reason, and the SIGTERM -> grace -> SIGKILL policy.

A run ends early for two reasons only: its wall deadline, or a ``RunStop`` (the
executor shutting down, the caller gone). Either way its child gets the same policy,
``terminate``: SIGTERM to its process group, a grace period to unwind (Python's
``finally`` blocks, Perl's exit report), then SIGKILL. The runner calls it from the one
block that also kills what escaped the group and reaps the child (``ending.py``). A
run's wait for its child (``wait_for_exit``, ``wait_for_end``) says which of the two
ended it, if one did, in the run's evidence.

A stop is a request, never a cancellation of the run's task: whatever waits on the
run's behalf (a place in the queue, the child, a qube step) registers a wake-up with
``RunStop.calling``, and the run then ends as KILLED with the stop's reason, recorded
and answered like any other run. ``stoppable`` turns a stop into ``RunStopped`` out of
a block of code, without touching a cancellation that comes from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from executor.sandbox import freezer

if TYPE_CHECKING:
    from executor.sandbox.exit_status import ChildExit
    from executor.sandbox.spawners import ChildHandle
    from executor.wall_deadline import WallDeadline


class RunStop:
    """A request to end one run early, and the reason its failure will report."""

    __slots__ = ("_wakers", "reason", "started")

    def __init__(self) -> None:
        self.reason = ""
        # Whether the run's code was let run: a stop before that leaves a run that never was.
        self.started = False
        self._wakers: list[Callable[[], object]] = []

    @property
    def requested(self) -> bool:
        return bool(self.reason)

    def start(self) -> bool:
        """Whether the run may start its code now (not stopped yet); if so it has started."""
        if self.reason:
            return False
        self.started = True
        return True

    def request(self, reason: str) -> None:
        """Stop the run; the first reason given is the one reported."""
        if not reason:
            raise ValueError("a stop needs a reason")
        if self.reason:
            return
        self.reason = reason
        for wake in list(self._wakers):
            wake()

    @contextlib.contextmanager
    def calling(self, wake: Callable[[], object]) -> Iterator[None]:
        """While inside, a stop calls ``wake`` (at once, if it was requested already)."""
        if self.reason:
            wake()
        self._wakers.append(wake)
        try:
            yield
        finally:
            self._wakers.remove(wake)


class RunStopped(Exception):
    """A block under ``stoppable`` was ended by its stop; the message is the reason."""


@contextlib.asynccontextmanager
async def stoppable(stop: RunStop) -> AsyncIterator[None]:
    """Run the block until it ends, or until ``stop`` is requested: then raise RunStopped.

    A cancel scope built on ``asyncio.timeout``: the stop moves its deadline to now. Only
    the scope's own cancellation becomes RunStopped; a cancellation from outside still
    propagates as CancelledError, and a TimeoutError of the block's own passes through.
    """
    loop = asyncio.get_running_loop()
    scope = asyncio.timeout(None)
    try:
        async with scope:
            with stop.calling(lambda: scope.reschedule(loop.time())):
                yield
    except TimeoutError:
        if not scope.expired():
            raise
        raise RunStopped(stop.reason) from None


async def wait_for_exit(
    handle: ChildHandle, deadline: WallDeadline, stop: RunStop, evidence: ChildExit
) -> None:
    """Until the main process exits, the wall deadline passes, or a stop."""
    exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    handle.on_exit.append(on_exit)
    if handle.exited.is_set():
        on_exit()
    await wait_for_end(exited, deadline, stop, evidence)


async def wait_for_end(
    ended: asyncio.Future[None],
    deadline: WallDeadline,
    stop: RunStop,
    evidence: ChildExit,
    last_look: Callable[[], bool] = lambda: False,
) -> None:
    """Until the main process exits or marks its end, the wall deadline passes, or a stop.

    The deadline moves on by the time the executor itself was held up (``WallDeadline``):
    a child waiting for a ``qb`` answer the held executor owed it gets it first.
    ``last_look`` at the deadline takes what the child sent that the loop has not
    handed over yet, and tells whether that marked its end: in time, not a timeout.
    """
    loop = asyncio.get_running_loop()
    try:
        # A cancel scope (asyncio.timeout), not wait_for: 3.11's wait_for can swallow
        # a cancellation that races with the awaited event.
        async with deadline.scope() as scope:
            # A stop ends the wait at once, as the deadline would.
            with stop.calling(lambda: scope.reschedule(loop.time())):
                await ended
    except TimeoutError:
        if stop.requested:
            evidence.stop_reason = stop.reason
            return
        # (``ended`` itself was cancelled with the wait: it cannot tell.)
        if not last_look():
            evidence.timed_out = True


def has_ended(pid: int) -> bool:
    """Whether ``pid`` has ended, even before its parent has reaped or reported it."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # A pidfd reads ready once it exits. poll, not select: the executor's descriptors
        # pass select()'s FD_SETSIZE (1024) with many connections or slots.
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(0))
    finally:
        os.close(pidfd)


def is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, a tracer) or frozen: it would read nothing sent to it.

    Its state in /proc/<pid>/stat, a read of a few microseconds; False when it is gone.
    Only a process in ``D``, as the v1 freezer shows its tasks, has its cgroup's freezer
    read too (``freezer``). A v2 freeze shows ``S``, as any idle child: not seen here.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        stat = os.read(fd, 512)
    except OSError:
        return False
    finally:
        os.close(fd)
    # "pid (comm) S ...": comm may hold ") ", so the state follows the last ")".
    end = stat.rfind(b")")
    state = stat[end + 2 : end + 3] if end >= 0 else b""
    return state in (b"T", b"t") or (state == b"D" and freezer.frozen_by(pid) is not None)


def signal_group(pgid: int, signum: int) -> None:
    """Signal the child's process group, or the child alone if it has not made it yet.

    The child calls setsid() first thing, but a child just forked may not have.
    """
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pgid, signum)
    except PermissionError:
        pass


async def terminate(
    pgid: int,
    exited: asyncio.Event,
    grace_s: float,
    before_kill: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """End a child's process group: SIGTERM, up to ``grace_s`` for the child to exit, SIGKILL.

    With ``grace_s`` 0, or once the child has exited, it is SIGKILL at once, which also
    ends whatever the child left running in its group. ``before_kill`` is awaited just
    before the SIGKILL of a child that has not exited.
    """
    if grace_s > 0 and not exited.is_set():
        signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await exited.wait()
    if before_kill is not None and not exited.is_set():
        await before_kill()
    signal_group(pgid, signal.SIGKILL)
