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

The runner ties its pieces together and owns the run itself and its answer: a cell's
child, taken prepared or started (cell_children.py), with its launch spec, cgroup caps
and environment (launch.py); the wait for its end (lifecycle.py); its end, the one
shielded kill-and-reap with a freezer's thaw and the cell's escapes, and the release of
its ends (ending.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Final

from executor.child import protocol
from executor.child.protocol import IsolationSpec, StartFrame
from executor.model import Limits, Outcome, Usage
from executor.policies import Policy
from executor.process_limit import OUT_OF_PROCESSES
from executor.runtimes.child import CHILD_RUNTIMES, ChildRuntime
from executor.sandbox import limits as sandbox_limits
from executor.sandbox.bridge import BridgeServer, CallHandler, send_now
from executor.sandbox.capture import CapturedStream, PipeReader
from executor.sandbox.cell_children import CellChildren, Child
from executor.sandbox.cgroup import PREFIX as CGROUP_PREFIX
from executor.sandbox.cgroup import CellCgroups, MemoryLimitTooLowError
from executor.sandbox.ending import Endings
from executor.sandbox.exit_status import (
    ChildExit,
    SandboxResult,
    expected_exit,
    launch_failed,
    memory_too_low,
    sandbox_result,
)
from executor.sandbox.launch import SANDBOX_MARKER
from executor.sandbox.lifecycle import RunStop, wait_for_end, wait_for_exit
from executor.sandbox.netns import EmptyNetwork
from executor.sandbox.spawners import Spawner
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
        # Each cell's OOM kill count when its last run ended: the next run's baseline.
        self._oom_kills: dict[int, int] = {}
        # Runs answered at their end mark whose children are still being ended.
        self._finishing: set[asyncio.Task[None]] = set()
        # Runs refused for want of descriptors or processes, and the log lines that say so.
        self._shortage = Shortage()
        self._endings = Endings(options, spawner)
        self._children = CellChildren(
            options,
            spawner,
            self._endings,
            self._shortage,
            self._oom_kills,
            prepare_ahead=prepare_ahead,
        )

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

    @property
    def prepared(self) -> int:
        """Children started ahead, ready and still there, not yet taken.

        A cell keeps its entry until its next run, also for a child that is gone since (its
        zygote died, it was killed) or whose start failed: those are not counted, nor one
        still starting.
        """
        return self._children.prepared

    async def prepared_pids(self) -> list[int]:
        """Pids of the children waiting for a run, once the ones being started are up.

        Runs answered at their end mark finish first: each prepares its cell's next child.
        """
        if self._finishing:
            await asyncio.wait(list(self._finishing))
        return await self._children.prepared_pids()

    def stop_preparing(self) -> None:
        """Start no child ahead from now on: the executor is stopping its runs.

        Nor wait for the end of a child killed already that is not ending
        (``ending.Endings``): it is left to the kernel, which ends it once it can.
        """
        self._children.stop_preparing()
        self._endings.stop_waiting()

    async def close(self) -> None:
        """Stop preparing and dispose of every prepared child (after the last run)."""
        self.stop_preparing()
        if self._finishing:
            await asyncio.wait(list(self._finishing))
        await self._endings.unended_done()
        await self._children.close()

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
                child = await self._children.take(runtime, limits, cell, policy)
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
                await wait_for_end(ended, deadline, stop, evidence, server.read_pending)
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
                    await wait_for_exit(child.handle, deadline, stop, evidence)
                    grace_s = (
                        self.options.grace_s if self._cut_short(child, started, evidence) else 0.0
                    )
            finally:
                if not answered_early:
                    # Every way out of the wait: shielded, so a second cancellation
                    # cannot cut it short (it finishes on its own; Endings.release waits for it).
                    evidence.escaped_pids = await asyncio.shield(self._endings.end(child, grace_s))
            if child.reaping is not None:
                # Killed and not ended (ending.KILL_WAIT_S): answered now, its slot held until then.
                answered_early = True
                return self._answer_unended(child, evidence, began, runtime, limits, policy)
            self._exit_evidence(child, evidence, began, oom_kills_before)
            # Everything of the run that could write to the pipes and the bridge is dead.
            await self._drain(child)
        finally:
            if not answered_early:
                await self._release_or_finish_later(child, runtime, limits, policy)
            if refused and child.reaping is None:  # never ran: the cell's next one, as below
                self._children.prepare(runtime, limits, cell, policy)
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
        self._children.prepare(runtime, limits, cell, policy)
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
    def _cut_short(child: Child, started: bool, evidence: ChildExit) -> bool:
        """Whether the run's wall deadline or a stop ended its wait (its child gets the grace).

        Past its deadline, the run is WALL_TIMEOUT however its child ends now.
        """
        child.handle.settled = started and evidence.timed_out
        return started and (evidence.timed_out or bool(evidence.stop_reason))

    @staticmethod
    def _send_start(
        child: Child, start: StartFrame, policy: Policy | None, gate: Callable[[], None] | None
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
        child: Child,
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
        child: Child,
        evidence: ChildExit,
        began: float,
        runtime: ChildRuntime,
        limits: Limits,
        policy: Policy | None,
    ) -> SandboxResult:
        """The result of a run whose child was killed and has not ended (``ending.KILL_WAIT_S``).

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
        self, child: Child, runtime: ChildRuntime, limits: Limits, policy: Policy | None
    ) -> None:
        """Release the ended child; one killed and not ended is, and its cell prepared, at its end."""
        if child.reaping is None:
            await asyncio.shield(self._endings.release(child))
        else:  # its run raised: the dispatcher frees its slot at once (no ``finishing``)
            self._finish_later(child, runtime, limits, policy, keeps_slot=False)

    def _exit_evidence(
        self, child: Child, evidence: ChildExit, began: float, oom_kills_before: int
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
        child: Child,
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
        child: Child,
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
        child: Child,
        runtime: ChildRuntime,
        limits: Limits,
        policy: Policy | None,
        *,
        keeps_slot: bool,
    ) -> None:
        """After an answer at the end mark: kill and reap everything, release, prepare the next."""
        ending = self._endings.end(child)
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
                await asyncio.shield(self._endings.release(child))
        self._children.prepare(runtime, limits, child.cell, policy)

    async def _drain(self, child: Child) -> None:
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
