"""A child's end: the one shielded kill-and-reap, a freezer's thaw, the cell's escapes, its release.

However a run's wait ends (an exit, the deadline, a stop, an error in a reader, a
cancellation), its child is ended by ``Endings.end``, started once per child as a task
that a second cancellation cannot cut short: the termination policy
(``lifecycle.terminate``: SIGTERM -> grace -> SIGKILL, or SIGKILL at once), then
whatever is left in the cell's cgroups (setsid and double-fork escapes) is killed and
the child reaped. A child a cgroup v1 freezer holds is let out of it to be killed
(``freezer.thaw``); one still there KILL_WAIT_S after its SIGKILL is waited for no
longer, the rest of its end going on in the background until it ends or the executor
stops. ``release`` waits for the end, then closes the executor's ends of the child's
pipes and bridge and removes its working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from typing import TYPE_CHECKING, Final

from executor.sandbox import freezer
from executor.sandbox.lifecycle import terminate
from executor.sandbox.spawners import Spawner

if TYPE_CHECKING:
    from executor.sandbox.cell_children import Child
    from executor.sandbox.process import SandboxOptions

logger = logging.getLogger(__name__)

# How long after its SIGKILL a child's end is waited for before its run is answered
# without it (its slot held until it ends). A cgroup v1 freezer holds a killed process
# until it is thawed: after the first part of this wait, the child is let out of one
# (``freezer.thaw``); a process that still does not end stays in the kernel's hands.
KILL_WAIT_S: Final = 2.0
THAW_AFTER_S: Final = 0.25


class Endings:
    """Ends a runner's children (kill, reap, thaw, the cell's escapes) and releases them."""

    def __init__(self, options: SandboxOptions, spawner: Spawner) -> None:
        self.options = options
        self.spawner = spawner
        # Set when the executor stops: children killed and not ended are waited for no more.
        self._stopping = asyncio.Event()
        # The ends of such children (``_reap_when_ended``), some awaited by no run.
        self._unended: set[asyncio.Task[list[int]]] = set()

    def stop_waiting(self) -> None:
        """Wait no more for the ends of children killed already that are not ending."""
        self._stopping.set()

    async def unended_done(self) -> None:
        """Until the ends of the children killed and not ended are done (or given up at a stop)."""
        if self._unended:
            await asyncio.wait(list(self._unended))

    def end(self, child: Child, grace_s: float = 0.0) -> asyncio.Task[list[int]]:
        """End every process of the child and reap it; returns the pids that had escaped its group.

        Started once per child, as a task: the first caller's ``grace_s`` holds (the wall
        deadline's and a stop's), and later callers wait for the same end.
        """
        if child.ending is None:
            child.ending = asyncio.get_running_loop().create_task(
                self._terminate_and_reap(child, grace_s)
            )
        return child.ending

    async def _terminate_and_reap(self, child: Child, grace_s: float) -> list[int]:
        if child.server is not None:
            # A bootstrap that makes its end mark now (its run ended by the SIGTERM, say)
            # waits for our side of the bridge before it exits: let it, within the grace.
            child.server.release_after_mark()
        handle = child.handle
        if grace_s > 0 and not handle.exited.is_set():
            # Cut short (its deadline, a stop): a freezer would keep the SIGTERM from it,
            # and the SIGKILL. Read only now: the run is overdue already.
            self.thaw(child)
        await terminate(handle.pid, handle.exited, grace_s, handle.before_kill)
        if not handle.exited.is_set() and not await self._ends_after_kill(child):
            reaping = child.reaping = asyncio.create_task(self._reap_when_ended(child))
            self._unended.add(reaping)
            reaping.add_done_callback(self._unended.discard)
            return []
        return await self._reap(child)

    async def _reap(self, child: Child) -> list[int]:
        # Reaped first: a process killed a moment ago is still listed in its cgroup, so
        # looking before its reap would find it there nearly every time (and poll).
        await self.spawner.reap(child.handle)
        return await self._kill_escaped(child.cell)

    async def _ends_after_kill(self, child: Child) -> bool:
        """Whether the child, SIGKILLed, ends within KILL_WAIT_S; if not, a WARNING says why.

        After THAW_AFTER_S it is let out of a v1 freezer that holds it (``thaw``).
        """
        handle = child.handle
        handle.await_end()  # a zygote's child: its zygote owes that end (its watchdog)
        if await _set_within(handle.exited, THAW_AFTER_S):
            return True
        self.thaw(child)
        if await _set_within(handle.exited, KILL_WAIT_S - THAW_AFTER_S):
            return True
        pid = handle.main_pid() or handle.pid
        held = freezer.frozen_by(pid)
        why = (
            f"frozen by the cgroup freezer {held}, which it could not be let out of"
            if held is not None
            else f"state {_process_state(pid)}: held in the kernel"
        )
        child.unended = f"process {pid}, {why}"
        logger.warning(
            "cell %d: process %d did not end within %gs of its SIGKILL (%s): its run is "
            "answered without it, and its slot stays taken until it ends",
            child.cell,
            pid,
            KILL_WAIT_S,
            why,
        )
        return False

    async def _reap_when_ended(self, child: Child) -> list[int]:
        """The rest of the end of a child that outlived KILL_WAIT_S: once it ends, or at a stop."""
        handle = child.handle
        began = time.monotonic()
        ended = asyncio.ensure_future(handle.exited.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([ended, stopping], return_when=asyncio.FIRST_COMPLETED)
        for waiter in (ended, stopping):
            waiter.cancel()
        if not handle.exited.is_set():
            logger.warning(
                "cell %d: process %d, killed, has still not ended: the executor stops "
                "without it (it ends once the kernel lets it: a freezer's thaw)",
                child.cell,
                handle.pid,
            )
            return []
        logger.info(
            "cell %d: process %d, killed, has ended at last (%.1fs later); its slot is free",
            child.cell,
            handle.pid,
            time.monotonic() - began,
        )
        return await self._reap(child)

    def thaw(self, child: Child) -> None:
        """Let each process of the child's cell out of a cgroup v1 freezer, said with a WARNING."""
        cgroups = self.options.cgroups
        handle = child.handle
        pids = cgroups.pids(child.cell) if cgroups is not None else []
        pids = pids or [pid for pid in {handle.pid, handle.main_pid()} if pid]
        for pid in pids:
            held = freezer.thaw(pid)
            if held is not None:
                logger.warning(
                    "cell %d: process %d was frozen from outside (cgroup freezer %s); let "
                    "out of it to be killed",
                    child.cell,
                    pid,
                    held,
                )

    async def release(self, child: Child) -> None:
        """Once the child has ended (ending it if nothing has), close our ends and remove its workdir.

        A child killed and not ended (``reaping``) is waited for no longer than KILL_WAIT_S:
        its ends are closed, and its end comes in the background.
        """
        try:
            ending = self.end(child)
            if not ending.done():
                await asyncio.wait([ending])
        finally:
            child.close()
            await remove_workdir(child.host_workdir)

    async def _kill_escaped(self, cell: int) -> list[int]:
        """SIGKILL every process left in the cell's cgroups (setsid and double-fork escapes)."""
        cgroups = self.options.cgroups
        if cgroups is None or not cgroups.has_processes(cell):
            return []  # the common case: nothing left, no thread needed
        return await asyncio.to_thread(cgroups.kill_all, cell)


async def _set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Whether ``event`` is set within ``timeout_s``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


def _process_state(pid: int) -> str:
    """The process's state letter from /proc (``?`` when it cannot be read), for the log."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return "?"
    return fields[fields.rfind(b")") + 2 :][:1].decode(errors="replace") or "?"


async def remove_workdir(workdir: str | None) -> None:
    """Remove the working directory: inline when empty, else in a thread (it may be huge)."""
    if workdir is None:
        return
    try:
        os.rmdir(workdir)
    except OSError:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
