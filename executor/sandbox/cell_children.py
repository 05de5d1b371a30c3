"""A cell's child for its run: the one started ahead of it when it fits, else one started now.

A child is started by the runner's ``Spawner`` (a cold fork+exec, or a fork of its
language's warm zygote), its cell's cgroup caps written first and its launch spec the
cell's last one when made for the same (``launch``). With ``prepare_ahead``, a cell that
has finished a run starts its next child straight away, which then only waits for its
start frame: the cell's next run takes it when it fits and is still ready (``take``),
and otherwise disposes of it and starts its own. A run waits for a zygote at most its
wall limit, then starts its child cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from executor.child.protocol import LaunchSpec
from executor.logs import outside_any_run
from executor.model import Limits
from executor.policies import Policy
from executor.runtimes.child import ChildRuntime
from executor.sandbox import launch
from executor.sandbox.bridge import BridgeServer
from executor.sandbox.capture import PipeReader
from executor.sandbox.cgroup import MemoryLimitTooLowError
from executor.sandbox.ending import Endings, remove_workdir
from executor.sandbox.launch import LaunchSpecs, child_environment
from executor.sandbox.lifecycle import has_ended, is_stopped
from executor.sandbox.spawners import ZYGOTE_LONGEST_WAIT_S, ChildHandle, Spawner
from executor.shortage import Shortage, at_capacity

if TYPE_CHECKING:
    from executor.sandbox.process import SandboxOptions

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Child:
    """A started, confined child and the executor's ends of its pipes and bridge.

    Until its start frame is sent it only waits (a *prepared* child): everything before
    the callback's code (fork, namespaces, mounts, the uid drop, Perl's start-up) is
    already done.
    """

    handle: ChildHandle
    cell: int
    spec: LaunchSpec
    # What the spec was made from (see ``launch.made_for``): a cheap test that it fits a run.
    made_for: tuple[object, ...]
    # Made (and removed) by the executor; None when it exists only inside the child.
    host_workdir: str | None
    stdout_r: int
    stderr_r: int
    bridge: socket.socket
    # Ending it: started once, by whichever path gets there first (see Endings.end).
    ending: asyncio.Task[list[int]] | None = None
    # While it runs: the readers of its stdout and stderr, and the bridge's server.
    pipes: tuple[PipeReader, ...] = ()
    server: BridgeServer | None = None
    # Until it fires, the pipes are read only at the run's end (process.PIPES_WATCHED_AFTER_S).
    pipes_timer: asyncio.TimerHandle | None = None
    # Killed and not ended within ending.KILL_WAIT_S: the rest of its end (reap, the cell's
    # escapes), which ``ending`` no longer waits for; and its process, and why it stays.
    reaping: asyncio.Task[list[int]] | None = None
    unended: str = ""

    def watch_pipes(self) -> None:
        """Read the pipes as output comes, from now on."""
        if self.pipes_timer is not None:
            self.pipes_timer.cancel()  # a no-op once it has fired
            self.pipes_timer = None
        for pipe in self.pipes:
            pipe.watch()

    def stop_serving(self) -> None:
        """No more reading from the pipes or the bridge (again is harmless)."""
        if self.pipes_timer is not None:
            self.pipes_timer.cancel()
            self.pipes_timer = None
        for pipe in self.pipes:
            pipe.close()
        if self.server is not None:
            self.server.close()

    def close(self) -> None:
        """Close the executor's ends (again is harmless)."""
        self.stop_serving()
        for fd in (self.stdout_r, self.stderr_r):
            if fd >= 0:
                os.close(fd)
        self.stdout_r = self.stderr_r = -1
        self.bridge.close()


class CellChildren:
    """Each cell's child for its next run, started ahead of it (``prepare_ahead``) or for it."""

    def __init__(
        self,
        options: SandboxOptions,
        spawner: Spawner,
        endings: Endings,
        shortage: Shortage,
        oom_kills: dict[int, int],
        *,
        prepare_ahead: bool,
    ) -> None:
        """``oom_kills`` is the runner's: each cell's OOM kill count when its last child ended."""
        self.options = options
        self.spawner = spawner
        self._endings = endings
        self._shortage = shortage
        self._oom_kills = oom_kills
        self._prepare_ahead = prepare_ahead
        self._prepared: dict[int, asyncio.Task[Child]] = {}
        self._specs = LaunchSpecs(options)
        isolation = options.isolation
        self._secret_files = isolation.secret_files if isolation is not None else ()
        self._closing = False

    async def _start(
        self,
        runtime: ChildRuntime,
        limits: Limits,
        cell: int,
        policy: Policy | None,
        *,
        ahead: bool = False,
    ) -> Child:
        """Start a child that confines itself and then waits for its start frame.

        A child started ``ahead`` of its run also warms itself up while it waits. For a
        run, a zygote is waited for at most its wall limit (``_bounded``): then the
        child is started cold.
        """
        try:
            return await self._start_child(runtime, limits, cell, policy, ahead=ahead)
        except TimeoutError:
            self._log_cold_start(cell, runtime, limits)
            return await self._start_child(runtime, limits, cell, policy, cold=True)

    @staticmethod
    def _bounded(limits: Limits) -> bool:
        """Whether a run's wait for its zygote needs a bound of its own: its wall limit.

        The zygote's watchdog bounds every wait at ``ZYGOTE_LONGEST_WAIT_S`` (then the
        zygote is killed, and its child started cold): a timer per run is needed only for
        a wall limit shorter than that.
        """
        return limits.wall_seconds < ZYGOTE_LONGEST_WAIT_S

    @staticmethod
    def _log_cold_start(cell: int, runtime: ChildRuntime, limits: Limits) -> None:
        logger.warning(
            "cell %d: the %s zygote did not start a child within its run's wall-clock limit "
            "of %gs; starting it cold",
            cell,
            runtime.language,
            limits.wall_seconds,
        )

    async def _start_child(
        self,
        runtime: ChildRuntime,
        limits: Limits,
        cell: int,
        policy: Policy | None,
        *,
        ahead: bool = False,
        cold: bool = False,
    ) -> Child:
        """``_start``'s child; TimeoutError when a run's wall limit passed first (``_bounded``)."""
        # Now, with the cell empty: the child joins its cgroups at once, and a prepared
        # child is taken only by a run with its limits (``launch.made_for``).
        self._specs.set_cgroup_limits(cell, limits)
        if self.options.isolation is not None:
            # Made by the child on its private /tmp: nothing on the host to make or remove.
            workdir, host_workdir = f"/tmp/cbexec-run-{secrets.token_hex(6)}", None
        else:
            workdir = host_workdir = tempfile.mkdtemp(prefix="cbexec-run-")
        made_for = launch.made_for(runtime, limits, policy, self._secret_files)
        spec = self._specs.spec(
            runtime, limits, cell, made_for, workdir=workdir, warm_up=ahead, policy=policy
        )
        try:
            stdout_r, stdout_w, stderr_r, stderr_w, parent_sock, child_sock = self._child_ends()
        except BaseException:
            await remove_workdir(host_workdir)
            raise
        try:
            parent_sock.setblocking(False)
            # Each process's data comes with its pid: only the callback's own reports the run.
            parent_sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            spawning = self.spawner.spawn(
                spec,
                env=child_environment(workdir),
                fds=(stdout_w, stderr_w, child_sock.fileno()),
                cold=cold,
            )
            if ahead or cold or not self._bounded(limits):
                handle = await spawning
            else:
                async with asyncio.timeout(limits.wall_seconds):
                    handle = await spawning
        except BaseException:
            for fd in (stdout_r, stderr_r):
                os.close(fd)
            parent_sock.close()
            await remove_workdir(host_workdir)
            raise
        finally:
            # The child has its own copies now; ours would keep the pipes from reaching EOF.
            os.close(stdout_w)
            os.close(stderr_w)
            child_sock.close()
        return Child(
            handle,
            cell,
            spec,
            made_for,
            host_workdir,
            stdout_r,
            stderr_r,
            parent_sock,
        )

    def _child_ends(self) -> tuple[int, int, int, int, socket.socket, socket.socket]:
        """A child's stdout and stderr pipes and its bridge; nothing left open when one fails.

        They fail when the executor is out of descriptors (``run`` refuses the run then).
        """
        with contextlib.ExitStack() as undo:
            stdout_r, stdout_w = os.pipe()
            undo.callback(os.close, stdout_r)
            undo.callback(os.close, stdout_w)
            stderr_r, stderr_w = os.pipe()
            undo.callback(os.close, stderr_r)
            undo.callback(os.close, stderr_w)
            network = self.options.bridge_network
            parent_sock, child_sock = network.socketpair() if network else socket.socketpair()
            undo.pop_all()
        return stdout_r, stdout_w, stderr_r, stderr_w, parent_sock, child_sock

    async def take(
        self, runtime: ChildRuntime, limits: Limits, cell: int, policy: Policy | None
    ) -> Child:
        """The cell's prepared child when it fits this run and still lives, else a new one.

        It fits when its launch spec is the one this run would have given it: other
        limits, say, would confine it differently. The spec is made only from the cell,
        the runner's options and ``launch.made_for``, so comparing those is enough. A child
        still being prepared is waited for at most the run's wall limit (``_bounded``),
        and then one is started cold.
        """
        pending = self._prepared.pop(cell, None)
        if pending is not None and not pending.done() and self._bounded(limits):
            await asyncio.wait([pending], timeout=limits.wall_seconds)
            if not pending.done():
                pending.cancel()
                await asyncio.wait([pending])
                self._log_cold_start(cell, runtime, limits)
                if not pending.cancelled() and pending.exception() is None:
                    await self._dispose(pending.result())  # started as it was cancelled
                return await self._start_child(runtime, limits, cell, policy, cold=True)
        if pending is not None:
            try:
                child = await pending
            except Exception as err:  # noqa: BLE001 - a failed preparation only costs the head start
                if isinstance(err, MemoryLimitTooLowError):
                    pass  # so will this run's own start: it says so
                elif at_capacity(err):
                    self._shortage.note(f"preparing children: {self._shortage.describe(err)}")
                else:
                    logger.warning("preparing a child in cell %d failed: %s", cell, err)
            else:
                # The policy also names the environment the prepared child has.
                fits = child.made_for == launch.made_for(
                    runtime, limits, policy, self._secret_files
                )
                if fits and _ready(child.handle):
                    return child
                if fits:  # gone, stopped or frozen: a freezer would keep its SIGKILL from it
                    self._endings.thaw(child)
                await self._dispose(child)
        return await self._start(runtime, limits, cell, policy)

    async def _dispose(self, child: Child) -> None:
        """End a child that will not run (SIGKILL, reap), close our ends, remove its workdir.

        What the kernel OOM-killed of it (a limit too low to start in) is no run's.
        """
        await asyncio.shield(self._endings.release(child))
        cgroups = self.options.cgroups
        if cgroups is not None:
            self._oom_kills[child.cell] = cgroups.oom_kills(child.cell)

    def prepare(
        self, runtime: ChildRuntime, limits: Limits, cell: int, policy: Policy | None
    ) -> None:
        if self._prepare_ahead and not self._closing and cell not in self._prepared:
            # For the cell's next run, whichever it is: not the run that ended.
            self._prepared[cell] = asyncio.create_task(
                self._start(runtime, limits, cell, policy, ahead=True), context=outside_any_run()
            )

    @property
    def prepared(self) -> int:
        """Children started ahead, ready and not yet taken (``SandboxRunner.prepared``)."""
        return sum(1 for task in self._prepared.values() if _is_ready(task))

    async def prepared_pids(self) -> list[int]:
        """Pids of the children waiting for a run, once the ones being started are up."""
        if self._prepared:
            await asyncio.wait(self._prepared.values())
        return [
            task.result().handle.pid
            for task in self._prepared.values()
            if not task.cancelled() and task.exception() is None
        ]

    def stop_preparing(self) -> None:
        """Start no child ahead from now on: the executor is stopping its runs."""
        self._closing = True

    async def close(self) -> None:
        """Dispose of every prepared child (after the last run)."""
        prepared, self._prepared = self._prepared, {}
        for task in prepared.values():
            try:
                child = await task
            except Exception:  # noqa: BLE001, S112 - nothing was started, nothing to dispose of
                continue
            await self._dispose(child)


def _ready(handle: ChildHandle) -> bool:
    """Whether a prepared child can take its run: alive, and not stopped from outside.

    A stopped one (SIGSTOP of its uid, a cgroup v1 freezer, a debugger) would never read
    its start frame, and its run would end WALL_TIMEOUT blamed on a callback that never ran.
    """
    if has_ended(handle.pid):
        return False
    # A cold child: its shim, and the callback's process that reads the frame.
    return not any(is_stopped(pid) for pid in {handle.pid, handle.main_pid()} if pid)


def _is_ready(preparation: asyncio.Task[Child]) -> bool:
    """Whether a preparation has a child that waits for its run (started, and not ended)."""
    if not preparation.done() or preparation.cancelled() or preparation.exception() is not None:
        return False
    return not preparation.result().handle.exited.is_set()
