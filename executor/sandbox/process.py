"""Run one callback in a sandboxed child to its classified result: start, supervise, end, reap.

The child is started by a ``Spawner`` (a cold fork+exec, or a fork of the warm zygote;
the executor itself never forks without exec), possibly before its run is asked for
(``prepare_ahead``). Either way it gets a new session, a scrubbed environment, a fresh
0700 working directory (a private tmpfs in the hardened tier), stdin from /dev/null,
and only stdio plus its end of the bridge socketpair (fd 3).

Supervision, in one place (``SandboxRunner.run``): the child's stdout, stderr and
bridge are served by tasks of one ``asyncio.TaskGroup``, while the run waits for the
main process to exit, its wall deadline, or a stop (``lifecycle.RunStop``). However
that wait ends (an exit, the deadline, a stop, an error in a reader, a cancellation),
one shielded block ends the child: the deadline and a stop get the
SIGTERM -> grace -> SIGKILL policy (``lifecycle.terminate``), everything else SIGKILL at
once; then whatever is left in the cell's cgroups (setsid and double-fork escapes) is
killed and the child reaped (its rusage reported by the callback's parent). A second
cancellation cannot cut that block short: it runs on as a task, and the release of the
child's pipes, bridge and working directory waits for it. A prepared child that will not run ends the same
way. The evidence is then classified (``exit_status``) into the run's ``SandboxResult``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Final

from executor.child import protocol
from executor.child.protocol import IsolationSpec, LaunchSpec, StartFrame
from executor.logs import outside_any_run
from executor.model import Limits, Outcome, Usage
from executor.policies import DEFAULT_UMASK, Policy
from executor.policy_binds import directories_now
from executor.process_limit import OUT_OF_PROCESSES
from executor.runtimes.child import CHILD_RUNTIMES, ChildRuntime
from executor.sandbox import freezer, host_limits
from executor.sandbox import limits as sandbox_limits
from executor.sandbox.bridge import BridgeServer, CallHandler, send_now
from executor.sandbox.capture import CapturedStream, PipeReader
from executor.sandbox.cgroup import PREFIX as CGROUP_PREFIX
from executor.sandbox.cgroup import CellCgroups, MemoryLimitTooLowError
from executor.sandbox.exit_status import (
    ChildExit,
    SandboxResult,
    expected_exit,
    launch_failed,
    memory_too_low,
    sandbox_result,
)
from executor.sandbox.lifecycle import RunStop, has_ended, is_stopped, terminate
from executor.sandbox.netns import EmptyNetwork
from executor.sandbox.spawners import ZYGOTE_LONGEST_WAIT_S, ChildHandle, Spawner
from executor.sandbox.stuck_slots import StuckSlots
from executor.sandbox.usage import live_usage
from executor.shortage import Shortage, at_capacity
from executor.wall_deadline import WallDeadline

logger = logging.getLogger(__name__)

# Without cgroups, how long after the main process ends to wait for the output pipes'
# and the bridge's EOF (with them, an empty cell is proof that nothing can write).
DRAIN_TIMEOUT_S: Final = 2.0
# How long into a run its stdout and stderr are left to the pipes' 64 KiB each before
# the event loop watches them (``PipeReader.watch``): a trivial callback ends well
# before, and its output is read at its end. A callback that fills a pipe sooner waits
# at most this long for the reader.
PIPES_WATCHED_AFTER_S: Final = 0.02
# How long after its SIGKILL a child's end is waited for before its run is answered
# without it (its slot held until it ends). A cgroup v1 freezer holds a killed process
# until it is thawed: after the first part of this wait, the child is let out of one
# (``freezer.thaw``); a process that still does not end stays in the kernel's hands.
KILL_WAIT_S: Final = 2.0
THAW_AFTER_S: Final = 0.25
SAFE_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
# Set in every callback's environment, valued with the executor's pid, so a leak check can
# find the processes (escaped ones included) that one executor started.
SANDBOX_MARKER: Final = "CBEXEC_SANDBOX"
# The languages that run in a child; each slot has one cell (cgroups, uid) per language.
CHILD_LANGUAGES: Final = tuple(CHILD_RUNTIMES)


@dataclass(frozen=True, slots=True)
class IsolationPlan:
    """The hardened tier: what each child hides and keeps, and the uids it runs as."""

    # Existing directories, none inside another: each gets one empty tmpfs.
    masks: tuple[str, ...]
    keep: tuple[str, ...]
    uid_base: int
    # Cells, one uid each: uid_base .. uid_base + uid_count - 1 (claimed at start).
    uid_count: int
    # Covered by each child after it joined its cgroups (the cgroup tree).
    late_masks: tuple[str, ...] = ()
    # The options of each child's own devpts instance (``tier.devpts_options``); "" none.
    devpts: str = ""
    # The executor's files that hold secrets (``secret_files``), outside the masks: each
    # child binds /dev/null over them.
    secret_files: tuple[str, ...] = ()

    def for_cell(self, cell: int) -> IsolationSpec:
        return {
            "masks": list(self.masks),
            "keep": list(self.keep),
            "uid": self.uid_base + cell,
            "gid": self.uid_base + cell,
            "shared_masks": [],  # a zygote names those it covered already
            "late_masks": list(self.late_masks),
            "binds": [],
            "groups": [],
            "devpts": self.devpts,
            "secret_files": list(self.secret_files),
        }


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """Host-level choices, probed once at start-up."""

    site_paths: tuple[str, ...]
    pid_namespace: bool
    network: bool
    grace_s: float
    cgroups: CellCgroups | None
    isolation: IsolationPlan | None = None
    # With the PID namespace: a new IPC namespace per child, and a cgroup namespace.
    ipc_namespace: bool = False
    cgroup_namespace: bool = False
    # seccomp.py's program for this machine, hex; "" when the host cannot take it. And
    # for zygotes: their own (CONFINING allowed), and what their children add to it.
    seccomp_filter: str = ""
    seccomp_zygote_filter: str = ""
    seccomp_closing_filter: str = ""
    # Where the bridge socketpairs are made (nothing of the host's network to see).
    bridge_network: EmptyNetwork | None = None
    # Each mechanism the host could not give, with the reason (for the tier report).
    inactive: tuple[tuple[str, str], ...] = ()

    @property
    def caps_processes_with_nproc(self) -> bool:
        """Whether a run's ``max_processes`` is its RLIMIT_NPROC (see limits.py).

        With a dedicated uid per cell, RLIMIT_NPROC counts only this callback; without a
        pids cgroup it is all there is.
        """
        return (
            self.isolation is not None
            or self.cgroups is None
            or ("pids" not in self.cgroups.controllers)
        )


def _ready(handle: ChildHandle) -> bool:
    """Whether a prepared child can take its run: alive, and not stopped from outside.

    A stopped one (SIGSTOP of its uid, a cgroup v1 freezer, a debugger) would never read
    its start frame, and its run would end WALL_TIMEOUT blamed on a callback that never ran.
    """
    if has_ended(handle.pid):
        return False
    # A cold child: its shim, and the callback's process that reads the frame.
    return not any(is_stopped(pid) for pid in {handle.pid, handle.main_pid()} if pid)


def started_by(pid: int, executor_pid: int) -> bool:
    """Whether process ``pid`` belongs to the sandbox of executor ``executor_pid`` (leak checks).

    Two marks, since neither sees everything: the environment marker (a fork of the
    zygote sets it with putenv, which /proc/<pid>/environ does not show), and membership
    of that executor's cell cgroups (joined only after a PID namespace is made, and absent
    without a writable cgroup). OSError when the process is gone or not ours to read.
    """
    with open(f"/proc/{pid}/environ", "rb") as environ:
        if f"{SANDBOX_MARKER}={executor_pid}".encode() in environ.read().split(b"\0"):
            return True
    with open(f"/proc/{pid}/cgroup") as cgroups:
        listed = cgroups.read()
    pool = f"/{CGROUP_PREFIX}{executor_pid}"
    return f"{pool}/" in listed or f"{pool}." in listed


def child_environment(workdir: str) -> dict[str, str]:
    """The environment a child starts with: nothing of the executor's, the same for every run.

    A policy's variables (``Policy.env``, secrets among them) are not here: they travel in
    the run's start frame, straight to the child, which sets them before the code runs.
    The zygote keeps freed memory of every spawn request it read, and each later child
    is a copy of it: anything a spawn request held, every later callback could read.
    """
    return {
        "PATH": SAFE_PATH,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # Read at a process's start: a cold child's, and what a callback execs (a zygote's
        # child keeps its zygote's, spawners.py).
        "MALLOC_ARENA_MAX": sandbox_limits.MALLOC_ARENA_MAX,
        SANDBOX_MARKER: str(os.getpid()),
    }


@dataclass(slots=True)
class _Child:
    """A started, confined child and the executor's ends of its pipes and bridge.

    Until its start frame is sent it only waits (a *prepared* child): everything before
    the callback's code (fork, namespaces, mounts, the uid drop, Perl's start-up) is
    already done.
    """

    handle: ChildHandle
    cell: int
    spec: LaunchSpec
    # What the spec was made from (see ``_made_for``): a cheap test that it fits a run.
    made_for: tuple[object, ...]
    # Made (and removed) by the executor; None when it exists only inside the child.
    host_workdir: str | None
    stdout_r: int
    stderr_r: int
    bridge: socket.socket
    # Ending it: started once, by whichever path gets there first (see _end).
    ending: asyncio.Task[list[int]] | None = None
    # While it runs: the readers of its stdout and stderr, and the bridge's server.
    pipes: tuple[PipeReader, ...] = ()
    server: BridgeServer | None = None
    # Until it fires, the pipes are read only at the run's end (see PIPES_WATCHED_AFTER_S).
    pipes_timer: asyncio.TimerHandle | None = None
    # Killed and not ended within KILL_WAIT_S: the rest of its end (reap, the cell's
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


class SandboxRunner:
    """Runs children under the options probed at start-up, started by ``spawner``.

    Each (slot, language) pair is a *cell* with its own cgroups and uid. With
    ``prepare_ahead``, a cell that has finished a run starts the next child with the
    same launch spec straight away, and the next run in that cell that asks for that
    spec only sends it its start frame: the start-up cost leaves the request's path.
    A run asking for another spec (other limits) discards it and starts its own.
    """

    def __init__(
        self,
        options: SandboxOptions,
        spawner: Spawner,
        *,
        prepare_ahead: bool = False,
        stuck: StuckSlots | None = None,
    ) -> None:
        """``stuck`` hears of each slot a killed process that has not ended keeps."""
        self.options = options
        self._stuck = stuck
        self.spawner = spawner
        self._prepare_ahead = prepare_ahead
        self._prepared: dict[int, asyncio.Task[_Child]] = {}
        isolation = options.isolation
        self._secret_files = isolation.secret_files if isolation is not None else ()
        # Each cell's last launch spec and what it was made from: the next child's, but
        # for its workdir and warm-up, unless the run's limits or policy differ.
        self._cell_specs: dict[int, tuple[tuple[object, ...], LaunchSpec]] = {}
        self._closing = False
        # Each cell's OOM kill count when its last run ended: the next run's baseline.
        self._oom_kills: dict[int, int] = {}
        # Runs answered at their end mark whose children are still being ended.
        self._finishing: set[asyncio.Task[None]] = set()
        # Set when the executor stops: children killed and not ended are waited for no more.
        self._stopping = asyncio.Event()
        # The ends of such children (``_reap_when_ended``), some awaited by no run.
        self._unended: set[asyncio.Task[list[int]]] = set()
        # Runs refused for want of descriptors or processes, and the log lines that say so.
        self._shortage = Shortage()

    @staticmethod
    def cells(slots: int) -> int:
        """Cells (cgroups, uids) needed for ``slots`` concurrent runs."""
        return slots * len(CHILD_LANGUAGES)

    @staticmethod
    def cell(slot: int, language: str) -> int:
        return slot * len(CHILD_LANGUAGES) + CHILD_LANGUAGES.index(language)

    @staticmethod
    def slot_of(cell: int) -> int:
        return cell // len(CHILD_LANGUAGES)

    def _launch_spec(
        self,
        runtime: ChildRuntime,
        limits: Limits,
        cell: int,
        made_for: tuple[object, ...],
        *,
        workdir: str,
        warm_up: bool,
        policy: Policy | None,
    ) -> LaunchSpec:
        """A child's launch spec: the cell's last one when made for the same (see ``_made_for``)."""
        made, spec = self._cell_specs.get(cell, ((), None))
        if spec is None or made != made_for:
            spec = self._new_launch_spec(runtime, limits, cell, policy)
            self._cell_specs[cell] = (made_for, spec)
        spec = spec.copy()
        spec["workdir"] = workdir
        spec["warm_up"] = warm_up
        return spec

    def _new_launch_spec(
        self, runtime: ChildRuntime, limits: Limits, cell: int, policy: Policy | None
    ) -> LaunchSpec:
        """The one place a child's launch spec is made (its workdir and warm-up left blank)."""
        cgroups = self.options.cgroups
        isolation = self.options.isolation
        cell_isolation = isolation.for_cell(cell) if isolation is not None else None
        host_network = self.options.network
        if policy is not None:
            host_network = policy.host_network
            if cell_isolation is not None:
                cell_isolation["binds"] = [
                    {
                        "source": b.path,
                        "target": b.target,
                        "writable": b.writable,
                        "source_identity": list(b.path_identity),
                        "target_identity": (
                            None if b.target_identity is None else list(b.target_identity)
                        ),
                    }
                    for b in policy.binds
                ]
                cell_isolation["groups"] = [policy.group] if policy.group is not None else []
        return {
            "language": runtime.language.value,
            "argv": runtime.argv(),
            "site_paths": list(self.options.site_paths),
            "pid_namespace": self.options.pid_namespace,
            # An empty network namespace per callback, unless the spawner's children
            # already start in one (a zygote makes one per cell, once: netns creation is
            # slow).
            "unshare_network": not host_network,
            "cell": cell,
            "ipc_namespace": self.options.ipc_namespace,
            "cgroup_namespace": self.options.cgroup_namespace,
            "seccomp_filter": self.options.seccomp_filter,
            "seccomp_zygote_filter": self.options.seccomp_zygote_filter,
            "seccomp_closing_filter": self.options.seccomp_closing_filter,
            "cgroup_procs": cgroups.procs_files(cell) if cgroups is not None else [],
            "rlimits": sandbox_limits.rlimits(
                limits,
                cap_processes_with_nproc=self.options.caps_processes_with_nproc,
                ceilings=host_limits.ceilings(),
            ),
            "isolation": cell_isolation,
            "disk_bytes": limits.disk_bytes,
            "workdir": "",
            "warm_up": False,
            "policy": policy.name if policy is not None else "job",
            "umask": policy.umask if policy is not None else DEFAULT_UMASK,
        }

    def _set_cgroup_limits(self, cell: int, limits: Limits) -> None:
        """The cell's caps, written while it is empty: before its child is started.

        MemoryLimitTooLowError when the memory limit is below what the empty cell holds.
        """
        if self.options.cgroups is not None and self.options.cgroups.set_limits(
            cell, processes=limits.max_processes, memory_bytes=limits.memory_bytes
        ):
            self._cell_specs.pop(cell, None)  # made again elsewhere: its cgroup.procs moved

    async def _start(
        self,
        runtime: ChildRuntime,
        limits: Limits,
        cell: int,
        policy: Policy | None,
        *,
        ahead: bool = False,
    ) -> _Child:
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
    ) -> _Child:
        """``_start``'s child; TimeoutError when a run's wall limit passed first (``_bounded``)."""
        # Now, with the cell empty: the child joins its cgroups at once, and a prepared
        # child is taken only by a run with its limits (``_made_for``).
        self._set_cgroup_limits(cell, limits)
        if self.options.isolation is not None:
            # Made by the child on its private /tmp: nothing on the host to make or remove.
            workdir, host_workdir = f"/tmp/cbexec-run-{secrets.token_hex(6)}", None
        else:
            workdir = host_workdir = tempfile.mkdtemp(prefix="cbexec-run-")
        made_for = _made_for(runtime, limits, policy, self._secret_files)
        spec = self._launch_spec(
            runtime, limits, cell, made_for, workdir=workdir, warm_up=ahead, policy=policy
        )
        try:
            stdout_r, stdout_w, stderr_r, stderr_w, parent_sock, child_sock = self._child_ends()
        except BaseException:
            await _remove_workdir(host_workdir)
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
            await _remove_workdir(host_workdir)
            raise
        finally:
            # The child has its own copies now; ours would keep the pipes from reaching EOF.
            os.close(stdout_w)
            os.close(stderr_w)
            child_sock.close()
        return _Child(
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

    async def _take(
        self, runtime: ChildRuntime, limits: Limits, cell: int, policy: Policy | None
    ) -> _Child:
        """The cell's prepared child when it fits this run and still lives, else a new one.

        It fits when its launch spec is the one this run would have given it: other
        limits, say, would confine it differently. The spec is made only from the cell,
        the runner's options and ``_made_for``, so comparing those is enough. A child
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
                fits = child.made_for == _made_for(runtime, limits, policy, self._secret_files)
                if fits and _ready(child.handle):
                    return child
                if fits:  # gone, stopped or frozen: a freezer would keep its SIGKILL from it
                    self._thaw(child)
                await self._dispose(child)
        return await self._start(runtime, limits, cell, policy)

    async def _dispose(self, child: _Child) -> None:
        """End a child that will not run (SIGKILL, reap), close our ends, remove its workdir.

        What the kernel OOM-killed of it (a limit too low to start in) is no run's.
        """
        await asyncio.shield(self._release(child))
        cgroups = self.options.cgroups
        if cgroups is not None:
            self._oom_kills[child.cell] = cgroups.oom_kills(child.cell)

    def _prepare(
        self, runtime: ChildRuntime, limits: Limits, cell: int, policy: Policy | None
    ) -> None:
        if self._prepare_ahead and not self._closing and cell not in self._prepared:
            # For the cell's next run, whichever it is: not the run that ended.
            self._prepared[cell] = asyncio.create_task(
                self._start(runtime, limits, cell, policy, ahead=True), context=outside_any_run()
            )

    @property
    def prepared(self) -> int:
        """Children started ahead, ready and still there, not yet taken.

        A cell keeps its entry until its next run, also for a child that is gone since (its
        zygote died, it was killed) or whose start failed: those are not counted, nor one
        still starting.
        """
        return sum(1 for task in self._prepared.values() if _is_ready(task))

    async def prepared_pids(self) -> list[int]:
        """Pids of the children waiting for a run, once the ones being started are up.

        Runs answered at their end mark finish first: each prepares its cell's next child.
        """
        if self._finishing:
            await asyncio.wait(list(self._finishing))
        if self._prepared:
            await asyncio.wait(self._prepared.values())
        return [
            task.result().handle.pid
            for task in self._prepared.values()
            if not task.cancelled() and task.exception() is None
        ]

    def stop_preparing(self) -> None:
        """Start no child ahead from now on: the executor is stopping its runs.

        Nor wait for the end of a child killed already that is not ending
        (``_reap_when_ended``): it is left to the kernel, which ends it once it can.
        """
        self._closing = True
        self._stopping.set()

    async def close(self) -> None:
        """Stop preparing and dispose of every prepared child (after the last run)."""
        self.stop_preparing()
        if self._finishing:
            await asyncio.wait(list(self._finishing))
        if self._unended:
            await asyncio.wait(list(self._unended))
        prepared, self._prepared = self._prepared, {}
        for task in prepared.values():
            try:
                child = await task
            except Exception:  # noqa: BLE001, S112 - nothing was started, nothing to dispose of
                continue
            await self._dispose(child)

    async def run(
        self,
        *,
        runtime: ChildRuntime,
        limits: Limits,
        slot: int,
        start: StartFrame,
        on_call: CallHandler,
        stop: RunStop | None = None,
        policy: Policy | None = None,
        gate: Callable[[], None] | None = None,
    ) -> SandboxResult:
        """Run one callback in a child to its classified result.

        Answered when the main process has exited, or at once at its end mark (the done
        frame, then the bridge shut down: the bootstrap's last act before it exits).
        Either way every process the run made is killed and reaped: before the answer,
        or, after an end mark, by the result's ``finishing`` task, which also releases
        the child (the slot is not free until it is done).

        ``policy``: the run's sandbox policy (network, binds, group, umask, environment);
        None confines it as the options alone say.

        ``gate`` is called once the start frame is sent, which then says the child is to
        wait for a go before it runs the code: the child reads the frame and prepares the
        run while the gate decides. What the gate raises ends the child unrun (no grace)
        and is raised here.

        A ``stop`` ends the run early (SIGTERM, grace, SIGKILL; a run stopped before its
        child got the start frame never starts): the outcome is KILLED with the stop's
        reason as its failure. A memory limit below what the cell holds with no process in
        it (cgroup v1 refuses it) ends the run MEMORY_LIMIT with no child started, as the
        kernel's OOM kill of a child that could not start within it does (``classify``).
        Raises UnavailableError when no child could be started, and
        CapacityError when the executor is out of descriptors or processes to start one
        (``shortage``).
        """
        stop = stop or RunStop()
        cell = self.cell(slot, runtime.language)
        with self._refused_at_capacity():
            try:
                child = await self._take(runtime, limits, cell, policy)
            except MemoryLimitTooLowError:
                return _memory_too_low_to_start(limits)
        evidence = ChildExit(
            stdout=CapturedStream(limits.output_bytes), stderr=CapturedStream(limits.output_bytes)
        )
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def end_wait() -> None:
            if not ended.done():
                ended.set_result(None)

        answered_early = refused = False
        try:
            grace_s = 0.0
            try:
                # Before its start frame: a refused run's child is ended below, never ran.
                with self._refused_at_capacity():
                    oom_kills_before = self._oom_kills_seen(cell)
                evidence.cell_cpu_before = self._cell_cpu(cell)
                began = time.monotonic()
                deadline = WallDeadline(limits.wall_seconds)
                started = stop.start()
                refused = started  # until the start frame is sent and the gate opens
                unsent = self._send_start(child, start, policy, gate) if started else b""
                refused = False
                server = self._serve(child, evidence, unsent, on_call, stop, end_wait)
                await self._wait_for_end(ended, deadline, stop, evidence, server.read_pending)
                if self._cut_short(child, started, evidence):
                    grace_s = self.options.grace_s
                elif server.end_marked and not child.handle.exited.is_set():
                    early = self._answer_at_end_mark(
                        child, evidence, limits, began, oom_kills_before
                    )
                    if early is not None:
                        answered_early = child.handle.settled = True
                        return replace(
                            early,
                            finishing=self._finish_later(child, runtime, limits, policy),
                        )
                    # Not answered at the mark: the exit decides, as for any run. The
                    # bootstrap waits for our side of the bridge to close before it exits.
                    server.close()
                    await self._wait_for_exit(child.handle, deadline, stop, evidence)
                    grace_s = (
                        self.options.grace_s if self._cut_short(child, started, evidence) else 0.0
                    )
            finally:
                if not answered_early:
                    # Every way out of the wait: shielded, so a second cancellation
                    # cannot cut it short (it finishes on its own; _release waits for it).
                    evidence.escaped_pids = await asyncio.shield(self._end(child, grace_s))
            if child.reaping is not None:
                # Killed and not ended (KILL_WAIT_S): answered now, its slot held until then.
                answered_early = True
                return self._answer_unended(child, evidence, began, runtime, limits, policy)
            self._exit_evidence(child, evidence, began, oom_kills_before)
            # Everything of the run that could write to the pipes and the bridge is dead.
            await self._drain(child)
        finally:
            if not answered_early:
                await self._release_or_finish_later(child, runtime, limits, policy)
            if refused and child.reaping is None:  # never ran: the cell's next one, as below
                self._prepare(runtime, limits, cell, policy)
        return self._concluded(evidence, runtime, limits, cell, policy)

    def _concluded(
        self,
        evidence: ChildExit,
        runtime: ChildRuntime,
        limits: Limits,
        cell: int,
        policy: Policy | None,
    ) -> SandboxResult:
        """The ended run's result, its cell given a child ready for the next one.

        A callback that never started because its process could not be forked (EAGAIN:
        the executor's or the host's process limit) is no failure of the callback's: the
        run is refused, as when its child could not be forked at all.
        """
        if launch_failed(evidence) and evidence.launch_errno == OUT_OF_PROCESSES:
            raise self._shortage.refusal(OSError(OUT_OF_PROCESSES, evidence.launch_failure))
        # A run its caller left (a deadline, a cancel) still leaves its cell a child ready;
        # a stopping executor prepares none (``stop_preparing``).
        self._prepare(runtime, limits, cell, policy)
        return sandbox_result(evidence, limits)

    @contextlib.contextmanager
    def _refused_at_capacity(self) -> Iterator[None]:
        """Out of descriptors or processes in the block: the run is refused, CapacityError."""
        try:
            yield
        except OSError as err:
            if not at_capacity(err):
                raise
            raise self._shortage.refusal(err) from err

    @staticmethod
    def _cut_short(child: _Child, started: bool, evidence: ChildExit) -> bool:
        """Whether the run's wall deadline or a stop ended its wait (its child gets the grace).

        Past its deadline, the run is WALL_TIMEOUT however its child ends now.
        """
        child.handle.settled = started and evidence.timed_out
        return started and (evidence.timed_out or bool(evidence.stop_reason))

    @staticmethod
    def _send_start(
        child: _Child, start: StartFrame, policy: Policy | None, gate: Callable[[], None] | None
    ) -> bytes:
        """Send the run's start frame, then, once its gate opens, the go; what the socket did not take.

        The rest goes through the bridge. What the gate raises is raised here.
        """
        if policy is not None and policy.env:
            start = {**start, "env": dict(policy.env)}
        if gate is not None:
            start = {**start, "gated": True}
        unsent = send_now(child.bridge, protocol.encode(start))
        child.handle.mark_running()
        if gate is None:
            return unsent
        gate()
        return unsent + protocol.GO_FRAME if unsent else send_now(child.bridge, protocol.GO_FRAME)

    @staticmethod
    def _serve(
        child: _Child,
        evidence: ChildExit,
        unsent: bytes,
        on_call: CallHandler,
        stop: RunStop,
        on_end: Callable[[], None],
    ) -> BridgeServer:
        """Read the child's pipes and serve its bridge; ``on_end`` at its exit or end mark."""
        loop = asyncio.get_running_loop()
        child.pipes = (
            PipeReader(loop, child.stdout_r, evidence.stdout),
            PipeReader(loop, child.stderr_r, evidence.stderr),
        )
        child.pipes_timer = loop.call_later(PIPES_WATCHED_AFTER_S, child.watch_pipes)
        child.server = BridgeServer(
            child.bridge, unsent, on_call, evidence, stop.request, on_end, child.handle.main_pid
        )
        child.handle.on_exit.append(on_end)
        if child.handle.exited.is_set():
            on_end()
        return child.server

    def _answer_unended(
        self,
        child: _Child,
        evidence: ChildExit,
        began: float,
        runtime: ChildRuntime,
        limits: Limits,
        policy: Policy | None,
    ) -> SandboxResult:
        """The result of a run whose child was killed and has not ended (``_ends_after_kill``).

        Its SIGKILL is its end, its output so far the run's; no figures of its end are
        there to take. The result's ``finishing`` ends when the child has.
        """
        evidence.wall_seconds = time.monotonic() - began
        evidence.wait_status = signal.SIGKILL  # as waitpid would say it: killed by SIGKILL
        for pipe in child.pipes:
            pipe.drain()
        child.stop_serving()
        return replace(
            sandbox_result(evidence, limits),
            finishing=self._finish_later(child, runtime, limits, policy),
        )

    async def _release_or_finish_later(
        self, child: _Child, runtime: ChildRuntime, limits: Limits, policy: Policy | None
    ) -> None:
        """Release the ended child; one killed and not ended is, and its cell prepared, at its end."""
        if child.reaping is None:
            await asyncio.shield(self._release(child))
        else:  # its run raised: the dispatcher frees its slot at once (no ``finishing``)
            self._finish_later(child, runtime, limits, policy, keeps_slot=False)

    def _exit_evidence(
        self, child: _Child, evidence: ChildExit, began: float, oom_kills_before: int
    ) -> None:
        """The kernel's evidence once the child has been reaped."""
        evidence.wall_seconds = time.monotonic() - began
        handle = child.handle
        evidence.wait_status = handle.wait_status
        evidence.cpu_seconds = handle.cpu_seconds
        self._count_cell_cpu(child.cell, evidence)
        evidence.peak_rss_bytes = handle.peak_rss_bytes
        evidence.lost_reason = handle.lost_reason
        cgroups = self.options.cgroups
        if cgroups is not None:
            self._oom_kills[child.cell] = cgroups.oom_kills(child.cell)
            evidence.oom_kills = self._oom_kills[child.cell] - oom_kills_before

    def _answer_at_end_mark(
        self,
        child: _Child,
        evidence: ChildExit,
        limits: Limits,
        began: float,
        oom_kills_before: int,
    ) -> SandboxResult | None:
        """The result at the child's end mark, from the kernel's figures now; None to wait for the exit.

        The callback has ended (its done frame came, then the bootstrap's shutdown of the
        bridge, which follows its exit handlers and END blocks): the main process exits
        next with the status its frame implies, so that status is taken. Its CPU time and
        peak RSS are read from /proc now (None once it is too late: the exit's own
        figures are then near), the cell's OOM kills from its memory cgroup; a run whose
        processes the kernel OOM-killed is classified as before (``classify``). What
        the pipes hold is read now: anything written after the mark is not the run's.
        """
        done = evidence.done
        if done is None or not child.handle.is_bootstrap:
            return None  # a cold child's shim: only the exit tells (``ChildHandle``)
        cgroups = self.options.cgroups
        tasks = cgroups.tasks(child.cell) if cgroups is not None else None
        if tasks is not None and tasks > 1:
            # The bridge's end carries no sender: with another process (or a thread)
            # of the run still there, it may have made it (a forked process's
            # shutdown) while the callback's own process is still at work, its exit
            # handlers able to change its exit status. Its exit decides.
            return None
        usage = live_usage(child.handle.pid)
        if usage is None:
            return None
        if usage[0] >= 0.75 * sandbox_limits.enforced_cpu_seconds(limits):
            return None  # near its CPU limit: the kernel's signal may be on its way
        evidence.wall_seconds = time.monotonic() - began
        evidence.wait_status = (expected_exit(done) & 0xFF) << 8
        evidence.cpu_seconds, evidence.peak_rss_bytes = usage
        self._count_cell_cpu(child.cell, evidence)
        if cgroups is not None:
            evidence.oom_kills = cgroups.oom_kills(child.cell) - oom_kills_before
        for pipe in child.pipes:
            pipe.drain()
        return sandbox_result(evidence, limits)

    def _finish_later(
        self,
        child: _Child,
        runtime: ChildRuntime,
        limits: Limits,
        policy: Policy | None,
        *,
        keeps_slot: bool = True,
    ) -> asyncio.Task[None]:
        """``_finish`` as a task; ``keeps_slot``: the run's slot waits for it (its ``finishing``)."""
        task = asyncio.get_running_loop().create_task(
            self._finish(child, runtime, limits, policy, keeps_slot=keeps_slot)
        )
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return task

    async def _finish(
        self,
        child: _Child,
        runtime: ChildRuntime,
        limits: Limits,
        policy: Policy | None,
        *,
        keeps_slot: bool,
    ) -> None:
        """After an answer at the end mark: kill and reap everything, release, prepare the next."""
        ending = self._end(child)
        try:
            escaped = await asyncio.shield(ending)
            if child.reaping is not None:  # killed and not ended yet: its slot waits for it
                kept = (
                    self._stuck.kept(self.slot_of(child.cell), child.unended)
                    if keeps_slot and self._stuck is not None
                    else contextlib.nullcontext()
                )
                with kept:
                    escaped = await asyncio.shield(child.reaping)
            if escaped:
                logger.info(
                    "cell %d: the callback left %d processes running; they were killed",
                    child.cell,
                    len(escaped),
                )
            cgroups = self.options.cgroups
            if cgroups is not None:  # the next run's baseline, after every kill
                self._oom_kills[child.cell] = cgroups.oom_kills(child.cell)
        except Exception:
            logger.exception("cell %d: ending a finished child failed", child.cell)
        finally:
            if ending.done() and child.reaping is None and child.host_workdir is None:
                child.close()  # nothing left to wait for: no task to shield it in
            else:
                await asyncio.shield(self._release(child))
        self._prepare(runtime, limits, child.cell, policy)

    async def _drain(self, child: _Child) -> None:
        """Take the rest of the pipes' output and the bridge's frames, then stop reading them.

        Once the cell is empty (every process of the run dead and reaped: nothing left
        that can write), what they hold is final and is read at once: no EOF is waited
        for, which a descriptor the callback left in flight in a unix socket, or one a
        process outside the cell holds, would hold back. Without that proof (no
        cgroups), up to DRAIN_TIMEOUT_S for their EOF, then they are given up.

        A qb call still being answered is not waited for: its caller is dead, so it is
        cancelled (recorded as cut short, ``HostApi.call``), and what the child sent
        after the call (the done frame of a handler's die in the wait) is read at once.
        """
        server = child.server
        if self._cell_is_empty(child.cell):
            for pipe in child.pipes:
                pipe.finish()
            if server is not None:
                server.finish()
        else:
            child.watch_pipes()
            waits = [pipe.eof for pipe in child.pipes]
            if server is not None:
                if server.answering:
                    server.abandon_call()
                waits.append(server.ended)
            pending = [wait for wait in waits if not wait.done()]
            if pending:
                await asyncio.wait(pending, timeout=DRAIN_TIMEOUT_S)
        child.stop_serving()

    @classmethod
    async def _wait_for_exit(
        cls, handle: ChildHandle, deadline: WallDeadline, stop: RunStop, evidence: ChildExit
    ) -> None:
        """Until the main process exits, the wall deadline passes, or a stop."""
        exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        handle.on_exit.append(on_exit)
        if handle.exited.is_set():
            on_exit()
        await cls._wait_for_end(exited, deadline, stop, evidence)

    @staticmethod
    async def _wait_for_end(
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

    def _end(self, child: _Child, grace_s: float = 0.0) -> asyncio.Task[list[int]]:
        """End every process of the child and reap it; returns the pids that had escaped its group.

        Started once per child, as a task: the first caller's ``grace_s`` holds (the wall
        deadline's and a stop's), and later callers wait for the same end.
        """
        if child.ending is None:
            child.ending = asyncio.get_running_loop().create_task(
                self._terminate_and_reap(child, grace_s)
            )
        return child.ending

    async def _terminate_and_reap(self, child: _Child, grace_s: float) -> list[int]:
        if child.server is not None:
            # A bootstrap that makes its end mark now (its run ended by the SIGTERM, say)
            # waits for our side of the bridge before it exits: let it, within the grace.
            child.server.release_after_mark()
        handle = child.handle
        if grace_s > 0 and not handle.exited.is_set():
            # Cut short (its deadline, a stop): a freezer would keep the SIGTERM from it,
            # and the SIGKILL. Read only now: the run is overdue already.
            self._thaw(child)
        await terminate(handle.pid, handle.exited, grace_s, handle.before_kill)
        if not handle.exited.is_set() and not await self._ends_after_kill(child):
            reaping = child.reaping = asyncio.create_task(self._reap_when_ended(child))
            self._unended.add(reaping)
            reaping.add_done_callback(self._unended.discard)
            return []
        return await self._reap(child)

    async def _reap(self, child: _Child) -> list[int]:
        # Reaped first: a process killed a moment ago is still listed in its cgroup, so
        # looking before its reap would find it there nearly every time (and poll).
        await self.spawner.reap(child.handle)
        return await self._kill_escaped(child.cell)

    async def _ends_after_kill(self, child: _Child) -> bool:
        """Whether the child, SIGKILLed, ends within KILL_WAIT_S; if not, a WARNING says why.

        After THAW_AFTER_S it is let out of a v1 freezer that holds it (``_thaw``).
        """
        handle = child.handle
        handle.await_end()  # a zygote's child: its zygote owes that end (its watchdog)
        if await _set_within(handle.exited, THAW_AFTER_S):
            return True
        self._thaw(child)
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

    async def _reap_when_ended(self, child: _Child) -> list[int]:
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

    def _thaw(self, child: _Child) -> None:
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

    async def _release(self, child: _Child) -> None:
        """Once the child has ended (ending it if nothing has), close our ends and remove its workdir.

        A child killed and not ended (``reaping``) is waited for no longer than KILL_WAIT_S:
        its ends are closed, and its end comes in the background.
        """
        try:
            ending = self._end(child)
            if not ending.done():
                await asyncio.wait([ending])
        finally:
            child.close()
            await _remove_workdir(child.host_workdir)

    def _cell_cpu(self, cell: int) -> float | None:
        cgroups = self.options.cgroups
        return None if cgroups is None else cgroups.cpu_seconds(cell)

    def _count_cell_cpu(self, cell: int, evidence: ChildExit) -> None:
        """The cell's CPU since the run began (``ChildExit.run_cpu_seconds``).

        Read once the run's processes are dead (or, at the end mark, when the main
        process is the cell's only one), so nothing adds to it after the read.
        """
        before = evidence.cell_cpu_before
        now = self._cell_cpu(cell)
        if before is not None and now is not None:
            evidence.cell_cpu_seconds = now - before

    def _oom_kills_seen(self, cell: int) -> int:
        """The cell's OOM kill count before this run, read from the cgroup only the first time."""
        cgroups = self.options.cgroups
        if cgroups is None:
            return 0
        if cell not in self._oom_kills:
            self._oom_kills[cell] = cgroups.oom_kills(cell)
        return self._oom_kills[cell]

    def _cell_is_empty(self, cell: int) -> bool:
        """Whether the cell's cgroups show no process (zombies count); False when there are none."""
        cgroups = self.options.cgroups
        return cgroups is not None and not cgroups.has_processes(cell)

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


def _memory_too_low_to_start(limits: Limits) -> SandboxResult:
    """A run whose memory limit no child can start in: none was, no output, no usage."""
    return SandboxResult(
        outcome=Outcome.MEMORY_LIMIT,
        failure=memory_too_low(limits),
        exit_code=0,
        signal=0,
        stdout="",
        stderr="",
        stdout_truncated=False,
        stderr_truncated=False,
        usage=Usage(0.0, 0.0, 0),
    )


def _is_ready(preparation: asyncio.Task[_Child]) -> bool:
    """Whether a preparation has a child that waits for its run (started, and not ended)."""
    if not preparation.done() or preparation.cancelled() or preparation.exception() is not None:
        return False
    return not preparation.result().handle.exited.is_set()


def _made_for(
    runtime: ChildRuntime, limits: Limits, policy: Policy | None, secret_files: tuple[str, ...]
) -> tuple[object, ...]:
    """What, beside the cell and the runner's options, a child is made from and for.

    Every limit but the wall clock's, which the executor alone enforces; and which file
    each secret file's path names (``_files_named``), and which directory each of the
    policy's binds (``directories_now``): a child hides and mounts those it named then.
    """
    confined = (
        limits.cpu_seconds,
        limits.memory_bytes,
        limits.output_bytes,
        limits.max_processes,
        limits.disk_bytes,
    )
    binds = directories_now(policy.binds) if policy is not None and policy.binds else ()
    return (
        runtime.language,
        tuple(runtime.argv()),
        confined,
        policy,
        _files_named(secret_files),
        binds,
    )


def _files_named(paths: tuple[str, ...]) -> tuple[tuple[int, int] | None, ...]:
    """(st_dev, st_ino) of the file at each path now; None where there is none.

    A file replaced by rename, as editors save, takes every mount on the old one with it,
    a prepared child's ``/dev/null`` cover too, and the new file is there to read: such a
    child no longer fits a run (``_take``). Taken before a child is started, so a child
    that covered the new file already is only discarded needlessly.
    """
    named: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            found = os.lstat(path)
        except OSError:
            named.append(None)
        else:
            named.append((found.st_dev, found.st_ino))
    return tuple(named)


async def _remove_workdir(workdir: str | None) -> None:
    """Remove the working directory: inline when empty, else in a thread (it may be huge)."""
    if workdir is None:
        return
    try:
        os.rmdir(workdir)
    except OSError:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
