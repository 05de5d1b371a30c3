"""How a sandboxed child is started: a cold fork+exec, or a fork of its language's warm zygote.

Both give a ``ChildHandle``: the child's pid (also its process group: it runs in a new
session), an event set when it has exited, and its wait status and rusage. The runner
(``process.py``) supervises both the same way.

Measured on the 2-core development machine (trivial Python callback, end to end through
the runner): cold ~55 ms, of which ~40 ms are imports and interpreter teardown; warm
fork from the zygote a few ms. The cold path stays as fallback and as a setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from executor.child.protocol import (
    ZYGOTE_PING,
    LaunchSpec,
    ZygoteMessage,
    encode_spawn,
    spawn_cell_fields,
)
from executor.errors import UnavailableError, own_copy
from executor.logs import outside_any_run
from executor.plurals import counted
from executor.policies import DEFAULT_UMASK
from executor.process_limit import OUT_OF_PROCESSES
from executor.runtimes.child import CHILD_RUNTIMES, LAUNCHER
from executor.sandbox.limits import MALLOC_ARENA_MAX
from executor.sandbox.shim_report import ShimReport
from executor.shortage import at_capacity

logger = logging.getLogger(__name__)

# Control messages either way; a spawn message is ~2 KiB (zygote.py and zygote.pl).
MAX_MESSAGE: Final = 64 << 10
# A language whose zygote fails this many spawns in a row starts its children cold (a
# zygote that died or was killed with several spawns under way counts once)...
MAX_ZYGOTE_FAILURES: Final = 3
# ...for this long; then one spawn tries its zygote again. Each failure of that try
# doubles the wait, up to the longest: a transient cause (EAGAIN under a pids limit) is
# outlived, and a permanent one (a zygote that cannot run here) costs one failed start
# an hour.
ZYGOTE_RETRY_AFTER_S: Final = 60.0
ZYGOTE_LONGEST_RETRY_AFTER_S: Final = 3600.0
# The zygote's watchdog: while a zygote owes the executor answers (a spawn's, or the end
# of a child that runs a callback or is being reaped), it is pinged every this many seconds, and one that
# has not answered a ping by the next is taken for hung (stopped, stuck in the kernel):
# killed, and restarted by the next spawn. A live one answers in microseconds, its
# start-up included (~40 ms); a whole period gives a loaded machine room.
ZYGOTE_PING_PERIOD_S: Final = 2.5
# The longest a zygote's answer is waited for: something owed just after a tick waits
# for the next tick's ping and the one after to judge it.
ZYGOTE_LONGEST_WAIT_S: Final = 2 * ZYGOTE_PING_PERIOD_S
# How long a cold child's shim is given to reap the callback the executor killed (it
# takes a few ms) before the SIGKILL of its whole process group.
SHIM_REAP_TIMEOUT_S: Final = 1.0
# A zygote's own environment (each child gets the one of its spawn request instead).
# LD_BIND_NOW: the dynamic linker resolves every library call once, at the zygote's
# start; lazily, each child would resolve its own first calls again, writing to the
# zygote's shared pages (~15 page faults per child). MALLOC_ARENA_MAX: a child, a fork
# of its zygote, keeps the zygote's malloc tunables; set only in the child's environment,
# it did nothing there (13 threads under the default 512 MiB, against 53 cold).
ZYGOTE_ENVIRONMENT: Final = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LD_BIND_NOW": "1",
    "MALLOC_ARENA_MAX": MALLOC_ARENA_MAX,
}


@dataclass
class ChildHandle:
    """A started child; ``exited`` is set once its status is known."""

    pid: int
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    wait_status: int = 0
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    # Why the child is gone when it was not its own doing (e.g. the zygote died).
    lost_reason: str = ""
    # Whether it was sent a run's code (``mark_running``): a prepared child that never
    # ran is not, and its loss costs no run. And whether that run's outcome no longer
    # depends on how the child ends (answered at its end mark, or past its wall limit).
    running: bool = False
    settled: bool = False
    # Whether the executor waits for its end (it runs a callback, or is being reaped),
    # and what is called when it starts to (a zygote's child: its zygote owes that end).
    end_awaited: bool = False
    on_end_awaited: Callable[[], object] | None = None
    # Called once ``exited`` is set (the runner waits for the exit or the end mark).
    on_exit: list[Callable[[], object]] = field(default_factory=list)
    # Whether ``pid`` is the callback's own bootstrap (a zygote's child), so its /proc
    # figures are the run's. A cold child is a shim that mirrors the callback's exit:
    # its figures say nothing of the callback (those come from its report,
    # ``shim_report``), and the bridge's EOF after a done frame may be the callback's
    # death rather than its end mark.
    is_bootstrap: bool = False
    # Awaited just before the executor's SIGKILL of a child that has not exited
    # (``lifecycle.terminate``): a cold child's callback is killed first (``shim_report``).
    before_kill: Callable[[], Awaitable[None]] | None = None
    # The callback's own process's pid, as the executor sees it (0 while not known):
    # only it may report the run on the bridge. ``pid`` itself for a zygote's child,
    # from the shim's report for a cold one.
    callback_pid: Callable[[], int] | None = None

    def main_pid(self) -> int:
        """The callback's own process's pid (0 while not known yet)."""
        if self.callback_pid is not None:
            return self.callback_pid()
        return self.pid if self.is_bootstrap else 0

    def mark_running(self) -> None:
        """The child was sent its run's start frame."""
        self.running = True
        self.await_end()

    def await_end(self) -> None:
        """The executor waits for the child's end from now on."""
        if not self.end_awaited:
            self.end_awaited = True
            if self.on_end_awaited is not None:
                self.on_end_awaited()

    def mark_exited(self) -> None:
        """Set ``exited`` and tell whoever waits (its status is filled in first)."""
        self.exited.set()
        for wake in self.on_exit:
            wake()


class Spawner(Protocol):
    """Starts a child running ``launcher.confine_and_run(spec)``, its bridge on fd 3."""

    async def spawn(
        self,
        spec: LaunchSpec,
        *,
        env: dict[str, str],
        fds: tuple[int, int, int],
        cold: bool = False,
    ) -> ChildHandle:
        """Fds are (stdout write end, stderr write end, bridge); the caller closes its copies.

        ``cold``: start it cold even where a zygote would (its run waited for one as long
        as its wall limit allows).
        """
        ...

    async def reap(self, handle: ChildHandle) -> None:
        """Fill the handle's status once ``exited`` is set (cold: waitpid and the shim's report; warm: done)."""
        ...

    async def close(self) -> None: ...


class ColdSpawner:
    """fork+exec of ``python -I -S -B launcher.py SPEC BRIDGE_FD REPORT_FD`` per callback.

    The launcher moves the bridge to fd 3 itself: Popen can place only stdio. It forks
    the callback and stays its parent (the shim), which reports the callback's pid and
    end on the REPORT_FD pipe (``shim_report``): the child's figures are the callback's.
    """

    def __init__(self, python: str) -> None:
        self._python = python
        self._pidfds: dict[int, int] = {}
        self._reports: dict[int, ShimReport] = {}

    async def spawn(
        self,
        spec: LaunchSpec,
        *,
        env: dict[str, str],
        fds: tuple[int, int, int],
        cold: bool = False,
    ) -> ChildHandle:
        stdout_w, stderr_w, bridge = fds
        report_r, report_w = os.pipe()  # out of descriptors: the runner refuses the run
        os.set_blocking(report_r, False)
        argv = [self._python, "-I", "-S", "-B", str(LAUNCHER), json.dumps(spec)]
        try:
            # Popen returns once the child has exec'd (vfork): no need for asyncio's
            # subprocess transport and its watcher, since we reap with wait4 ourselves.
            proc = subprocess.Popen(  # noqa: ASYNC220
                [*argv, str(bridge), str(report_w)],
                stdin=subprocess.DEVNULL,
                stdout=stdout_w,
                stderr=stderr_w,
                cwd="/",
                env=env,
                start_new_session=True,
                pass_fds=(bridge, report_w),
            )
        except OSError as err:
            os.close(report_r)
            if at_capacity(err):
                raise  # the runner refuses the run for capacity
            raise UnavailableError(f"could not start the sandbox: {err}") from err
        finally:
            os.close(report_w)  # the shim's alone: EOF once it has gone
        # We reap with wait4 ourselves; Popen must not try again.
        proc.returncode = 0
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            # No way to watch it (out of descriptors): the shim is not left behind.
            os.close(report_r)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)  # noqa: ASYNC222 - killed: its end is a moment away
            raise
        report = self._reports[proc.pid] = ShimReport(report_r, proc.pid)
        handle = ChildHandle(proc.pid)
        handle.before_kill = functools.partial(self._kill_callback, handle, report)
        handle.callback_pid = report.callback
        self._pidfds[proc.pid] = pidfd
        asyncio.get_running_loop().add_reader(pidfd, handle.mark_exited)
        return handle

    @staticmethod
    async def _kill_callback(handle: ChildHandle, report: ShimReport) -> None:
        """The callback first, then a moment for its shim to reap it, report and exit."""
        if report.kill_callback():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHIM_REAP_TIMEOUT_S):
                    await handle.exited.wait()

    async def reap(self, handle: ChildHandle) -> None:
        pidfd = self._pidfds.pop(handle.pid, None)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            # Called once the child has exited (its pidfd read ready): waitpid does not block.
            _, handle.wait_status = os.waitpid(handle.pid, 0)  # noqa: ASYNC222
        report = self._reports.pop(handle.pid, None)
        if report is not None:
            handle.cpu_seconds, handle.peak_rss_bytes = report.figures()
            report.close()

    async def close(self) -> None:
        for pid, pidfd in list(self._pidfds.items()):
            poller = select.poll()  # not select(): our descriptors may pass FD_SETSIZE
            poller.register(pidfd, select.POLLIN)
            if poller.poll(0):  # it has exited
                await self.reap(ChildHandle(pid))
            else:  # killed and not ended (a freezer holds it): its waitpid would block
                asyncio.get_running_loop().remove_reader(pidfd)
                os.close(self._pidfds.pop(pid))
                if (report := self._reports.pop(pid, None)) is not None:
                    report.close()


@dataclass(frozen=True, slots=True)
class ZygoteStatus:
    """One language's warm helper: its pid (0 while not running) and how often it restarted."""

    language: str
    pid: int = 0
    restarts: int = 0
    # False while the language starts its children cold after MAX_ZYGOTE_FAILURES failures
    # (until a zygote tried again works: ZYGOTE_RETRY_AFTER_S).
    warm: bool = True
    # Whether it ran and is gone (it died, or was killed for not answering): the next
    # child asked of it starts it again. False before its language's first callback.
    died: bool = False


class ZygoteLost(UnavailableError):
    """A zygote died, or was killed for not answering, with this spawn unanswered."""

    def __init__(self, message: str, zygote_pid: int | None) -> None:
        super().__init__(message)
        # Which zygote process it was: one loss, however many spawns it had under way.
        self.zygote_pid = zygote_pid


class _Zygote:
    """One warm helper process (one language) and the children it has forked.

    Started as ``argv`` + the fd of its end of the control socket + ``options``.

    Its watchdog: one timer, running while the zygote owes the executor an answer (a
    spawn, or the end of a child that runs a callback or is being reaped). Each tick sends a ping
    (``protocol.ZYGOTE_PING``); a ping still unanswered at the next tick means the
    zygote's loop has not turned for a whole period, and it is killed (``_lose``).
    Nothing per run but a flag: a run's own wait needs no timer of its own.

    Its control socket full (a burst of spawns while the zygote forks, or is held up a
    moment) is back-pressure, not a death: what does not fit waits in ``_outbox``, in
    order, for the socket to be writable. The watchdog's ping queues behind it, so a
    zygote that reads nothing for a whole period is still taken for hung.
    """

    def __init__(self, argv: list[str], language: str, options: list[str]) -> None:
        self._argv = argv
        self._options = options
        self.language = language
        self._ids = itertools.count(1)
        self._control: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._starting: dict[int, asyncio.Future[ChildHandle]] = {}
        self._children: dict[int, ChildHandle] = {}
        self._lock = asyncio.Lock()
        # Processes started so far: every one after the first replaced one that died.
        self.starts = 0
        # Reused: a fresh 64 KiB bytes per message costs more than reading the message.
        self._buffer = bytearray(MAX_MESSAGE)
        # Each cell's last part of a spawn message, and its JSON: encoded once per change.
        self._cell_parts: dict[int, tuple[dict[str, object], bytes]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._ping_unanswered = False
        # Messages the full socket did not take yet, oldest first: (spawn id or None for
        # a ping, payload, fds). The fds stay the spawning run's until the message is sent.
        self._outbox: deque[tuple[int | None, bytes, list[int]]] = deque()
        self._awaiting_room = False  # ``_flush`` is the socket's writer callback
        # Killed zygotes not reaped yet (one stuck in the kernel dies when it leaves it).
        self._reaping: set[asyncio.Future[int]] = set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def _ensure_started(self) -> socket.socket:
        if self._control is not None:
            return self._control
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [*self._argv, str(theirs.fileno()), *self._options]
        try:
            self._process = subprocess.Popen(  # noqa: ASYNC220 - as ColdSpawner.spawn
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env=ZYGOTE_ENVIRONMENT,
            )
        except OSError as err:
            ours.close()
            if at_capacity(err):
                raise  # not the zygote's failure: the runner refuses the run for capacity
            raise UnavailableError(f"could not start the {self.language} zygote: {err}") from err
        finally:
            theirs.close()
        self.starts += 1
        ours.setblocking(False)
        # The zygote serves every later run too: its reader belongs to no run.
        outside_any_run().run(asyncio.get_running_loop().add_reader, ours, self._on_message)
        self._control = ours
        self._ping_unanswered = False
        logger.info("%s sandbox zygote started (pid %d)", self.language, self._process.pid)
        return ours

    def _on_message(self) -> bool:
        """Handle one message of the zygote's, if one is there (whether one was)."""
        control = self._control
        if control is None:  # a message queued before the socket was closed
            return False
        try:
            size = control.recv_into(self._buffer)
        except BlockingIOError:
            return False
        except OSError:
            size = 0
        if not size:
            self._lose("died")
            return False
        message: ZygoteMessage = json.loads(self._buffer[:size])
        if message["type"] == "started":
            # Registered here, not by the spawning coroutine: "exited" may be the very
            # next message, handled before that coroutine resumes.
            started = self._children[message["pid"]] = ChildHandle(
                message["pid"], is_bootstrap=True, on_end_awaited=self._watch
            )
            future = self._starting.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_result(started)
            else:  # its run stopped waiting (cancelled): no one will run it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(started.pid, signal.SIGKILL)
        elif message["type"] == "failed":
            failed = message["id"]
            future = self._starting.pop(failed, None) if failed is not None else None
            if future is not None and not future.done():
                error: Exception = UnavailableError(f"zygote could not fork: {message}")
                if message.get("errno") == OUT_OF_PROCESSES:
                    # The process limit, not the zygote: refused for capacity (the cold
                    # path would need more processes still), and no zygote failure.
                    error = OSError(OUT_OF_PROCESSES, f"zygote could not fork: {message['error']}")
                future.set_exception(error)
        elif message["type"] == "exited":
            handle = self._children.pop(message["pid"], None)
            if handle is not None:
                handle.wait_status = message["status"]
                handle.cpu_seconds = message["cpu"]
                handle.peak_rss_bytes = message["maxrss_kib"] * 1024
                handle.mark_exited()
        elif message["type"] == "pong":
            self._ping_unanswered = False
        return True

    def _watch(self) -> None:
        """Have the watchdog run (it stops by itself once nothing is owed)."""
        if self._watchdog is None and self._control is not None:
            self._watchdog = asyncio.get_running_loop().call_later(
                ZYGOTE_PING_PERIOD_S, self._on_watchdog, context=outside_any_run()
            )

    def _owes_answers(self) -> bool:
        return bool(self._starting) or any(c.end_awaited for c in self._children.values())

    def _on_watchdog(self) -> None:
        self._watchdog = None
        # What the zygote sent that the loop has not handed over yet (the reader takes
        # one message per wake-up): a pong among it, when the executor was held up.
        while self._on_message():
            pass
        control = self._control
        if control is None:
            return
        if self._ping_unanswered:
            self._lose(f"did not answer for {ZYGOTE_PING_PERIOD_S:g} s and was killed")
            return
        if not self._owes_answers():
            return
        # Behind any spawn still waiting for room: answered once the zygote has read them.
        self._send(None, ZYGOTE_PING, [])
        if self._control is None:
            return  # the send found it dead
        self._ping_unanswered = True
        self._watch()

    def _send(self, request_id: int | None, payload: bytes, fds: list[int]) -> None:
        """Send a message now, or queue it behind those waiting for room; a dead socket loses the zygote."""
        self._outbox.append((request_id, payload, fds))
        if len(self._outbox) == 1:
            self._flush()

    def _flush(self) -> None:
        """Send what waits, in order, until the socket is full (then wait until it is writable)."""
        control = self._control
        if control is None:
            return
        loop = asyncio.get_running_loop()
        while self._outbox:
            _, payload, fds = self._outbox[0]
            try:
                if fds:
                    socket.send_fds(control, [payload], fds)
                else:
                    control.send(payload)
            except BlockingIOError:
                # Full: its reader frees room as the zygote reads (a hung zygote, the
                # watchdog's ping unanswered behind these, is killed at its next tick).
                outside_any_run().run(loop.add_writer, control, self._flush)
                self._awaiting_room = True
                return
            except OSError:
                self._lose("died")
                return
            self._outbox.popleft()
        if self._awaiting_room:  # a spawn that found room at once registered nothing
            self._awaiting_room = False
            loop.remove_writer(control)

    def _unsend(self, request_id: int) -> bool:
        """Take a spawn out of the outbox if it is still there (whether it was)."""
        for n, (queued, _, _) in enumerate(self._outbox):
            if queued == request_id:
                del self._outbox[n]
                return True
        return False

    def _lose(self, what: str) -> None:
        """The zygote died (or is killed now): every child in flight is reported killed.

        Its children die with it (PR_SET_PDEATHSIG) and are killed here too. A run whose
        child it was ends ``KILLED`` (``lost_reason``); a spawn it had not answered raises
        ``ZygoteLost`` (the spawner starts that child cold); the next spawn restarts it.
        """
        children = self._children.values()
        running = sum(1 for child in children if child.running and not child.settled)
        # Runs already answered (or past their wall limit) whose slots waited for its
        # report of their children's end.
        settled = sum(1 for child in children if child.running and child.settled)
        prepared = sum(1 for child in children if not child.running)
        logger.error(
            "%s sandbox zygote (pid %s) %s: %s running in it reported KILLED, %s of runs "
            "already answered let go, %s prepared for runs discarded, %s being started "
            "started cold instead",
            self.language,
            self.pid,
            what,
            counted(running, "callback"),
            counted(settled, "slot"),
            counted(prepared, "child", "children"),
            counted(sum(1 for f in self._starting.values() if not f.done()), "child", "children"),
        )
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        control, self._control = self._control, None
        self._outbox.clear()  # each spawn's fds are its run's again (started cold)
        if control is not None:
            asyncio.get_running_loop().remove_reader(control)
            asyncio.get_running_loop().remove_writer(control)
            self._awaiting_room = False
            control.close()
        lost = ZygoteLost(f"the sandbox zygote {what}", self.pid)
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            if process.poll() is None:  # not gone yet: not waited for on the event loop
                reaping = asyncio.ensure_future(asyncio.to_thread(process.wait))
                self._reaping.add(reaping)
                reaping.add_done_callback(self._reaping.discard)
        for n, future in enumerate(self._starting.values()):
            if not future.done():
                future.set_exception(lost if n == 0 else own_copy(lost))
        self._starting.clear()
        reason = f"the sandbox zygote {what} while the callback ran"
        for handle in self._children.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, signal.SIGKILL)
            handle.wait_status = signal.SIGKILL
            handle.lost_reason = reason
            handle.mark_exited()
        self._children.clear()

    async def spawn(
        self, spec: LaunchSpec, env: dict[str, str], fds: tuple[int, int, int]
    ) -> ChildHandle:
        async with self._lock:
            await self._ensure_started()
            request_id = next(self._ids)
            payload = encode_spawn(request_id, spec, env, self._cell_part(spec))
            if len(payload) > MAX_MESSAGE:
                raise UnavailableError(
                    f"spawn message of {len(payload)} bytes exceeds {MAX_MESSAGE}"
                )
            future: asyncio.Future[ChildHandle] = asyncio.get_running_loop().create_future()
            self._starting[request_id] = future
            self._send(request_id, payload, list(fds))  # a dead socket fails the future
            self._watch()
        try:
            return await future
        except asyncio.CancelledError:
            if self._unsend(request_id):
                # Never sent: its fds, which its run closes now, must not be either.
                self._starting.pop(request_id, None)
            elif future.done() and not future.cancelled():
                # Started the moment its run stopped waiting: no one will run it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(future.result().pid, signal.SIGKILL)
            raise

    def _cell_part(self, spec: LaunchSpec) -> bytes:
        fields = spawn_cell_fields(spec)
        known = self._cell_parts.get(spec["cell"])
        if known is None or known[0] != fields:
            known = self._cell_parts[spec["cell"]] = (fields, json.dumps(fields).encode())
        return known[1]

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outbox.clear()
        if self._control is not None:
            asyncio.get_running_loop().remove_reader(self._control)
            asyncio.get_running_loop().remove_writer(self._control)
            self._awaiting_room = False
            self._control.close()
            self._control = None
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await asyncio.to_thread(self._process.wait)
            self._process = None
        if self._reaping:
            await asyncio.wait(list(self._reaping))


def starts_cold(spec: LaunchSpec) -> bool:
    """Whether a policy's child must start cold: binds, a group or another umask.

    A zygote's mount namespace already covers /run, /dev/shm and the other masks, where
    a bind's source may lie, and Perl's zygote confines its children in Perl: the
    launcher of a cold child applies these itself (executor/policies.py).
    """
    isolation = spec["isolation"]
    return spec["umask"] != DEFAULT_UMASK or (
        isolation is not None and bool(isolation["binds"] or isolation["groups"])
    )


class ZygoteSpawner:
    """Forks children from a warm, single-threaded zygote per language and network; restarts one that dies or hangs.

    Python's zygote (``zygote.py``) and Perl's (``perl/zygote.pl``) are started on their
    language's first callback and confine their children the same way. A policy with
    the host network (where the others have a private one) gets zygotes of its own,
    started without ``--private-network``; a policy with binds starts its children cold
    (``starts_cold``). The cold path is also the fallback: a child its zygote could not
    start (it failed, died, or hung: ``_Zygote``'s watchdog) is started cold, and a
    language whose zygote fails ``MAX_ZYGOTE_FAILURES`` times in a row (it cannot start
    here, or cannot fork for now) starts all its children cold for ``ZYGOTE_RETRY_AFTER_S``;
    then one spawn tries a zygote again, and each failure of that doubles the wait.
    """

    def __init__(self, python: str, *, private_network: bool = False) -> None:
        # Enter one empty network namespace in each zygote, inherited by every child:
        # creating a namespace per callback costs milliseconds under a kernel-wide lock.
        self._python = python
        self._private_network = private_network
        options = ["--private-network"] if private_network else []
        self._zygotes = {
            str(language): _Zygote(runtime.zygote_argv(python), language, options)
            for language, runtime in CHILD_RUNTIMES.items()
        }
        # Zygotes for the other network (a policy's): made on its first child.
        self._other_network: dict[str, _Zygote] = {}
        self._failures = dict.fromkeys(self._zygotes, 0)
        # A language gone cold (MAX_ZYGOTE_FAILURES): when its zygote is tried again
        # (``time.monotonic()``), and the wait after that try if it fails too.
        self._retry_at: dict[str, float] = {}
        self._retry_after_s = dict.fromkeys(self._zygotes, ZYGOTE_RETRY_AFTER_S)
        # The pid of each language's zygote whose loss was counted last (``_new_failure``).
        self._losses_counted: dict[str, int | None] = {}
        self._cold = ColdSpawner(python)
        self._cold_pids: set[int] = set()

    def _zygote_for(self, spec: LaunchSpec) -> tuple[_Zygote | None, bool]:
        """The zygote for the spec's language and network, and whether its network is private."""
        language = spec["language"]
        private = spec["unshare_network"]  # the policy's network: an empty one, or the host's
        if private == self._private_network:
            return self._zygotes.get(language), private
        zygote = self._other_network.get(language)
        if zygote is None and language in self._zygotes:
            runtime = next(r for lang, r in CHILD_RUNTIMES.items() if str(lang) == language)
            options = ["--private-network"] if private else []
            zygote = _Zygote(runtime.zygote_argv(self._python), language, options)
            self._other_network[language] = zygote
        return zygote, private

    async def spawn(
        self,
        spec: LaunchSpec,
        *,
        env: dict[str, str],
        fds: tuple[int, int, int],
        cold: bool = False,
    ) -> ChildHandle:
        language = spec["language"]
        zygote, private = self._zygote_for(spec)
        if cold or starts_cold(spec):
            zygote = None
        if zygote is not None and self._may_try_zygote(language):
            warm_spec = spec
            if private:
                warm_spec = spec.copy()
                warm_spec["unshare_network"] = False  # inherited from the zygote
            try:
                handle = await zygote.spawn(warm_spec, env, fds)
            except UnavailableError as err:
                self._failed(language, err)
            else:
                self._worked(language)
                return handle
        handle = await self._cold.spawn(spec, env=env, fds=fds)  # our fds are still ours
        self._cold_pids.add(handle.pid)
        return handle

    def _may_try_zygote(self, language: str) -> bool:
        """Whether this spawn may use the language's zygote: warm, or its retry is due now.

        A due retry is this spawn's alone: the next one is put off at once, so the spawns
        of a busy moment do not all try (and fail) together.
        """
        if self._failures[language] < MAX_ZYGOTE_FAILURES:
            return True
        now = time.monotonic()
        if now < self._retry_at.get(language, now):
            return False
        self._retry_at[language] = now + self._retry_after_s[language]
        return True

    def _failed(self, language: str, err: UnavailableError) -> None:
        """One more failure of the language's zygote: log it, and go cold after too many."""
        if not self._new_failure(language, err):
            return  # the same lost zygote: counted and logged with its first spawn
        failures = self._failures[language] = self._failures[language] + 1
        if failures < MAX_ZYGOTE_FAILURES:
            logger.warning("%s zygote: %s; starting this child cold", language, err)
            return
        wait = self._retry_after_s[language]
        if failures > MAX_ZYGOTE_FAILURES:  # its retry failed: wait twice as long
            wait = self._retry_after_s[language] = min(2 * wait, ZYGOTE_LONGEST_RETRY_AFTER_S)
        self._retry_at[language] = time.monotonic() + wait
        logger.error(
            "%s zygote failed %s (%s); %s callbacks start cold, and its zygote is tried again "
            "in %gs",
            language,
            f"{MAX_ZYGOTE_FAILURES} times in a row"
            if failures == MAX_ZYGOTE_FAILURES
            else "again when tried",
            err,
            language,
            wait,
        )

    def _worked(self, language: str) -> None:
        """The language's zygote started a child: warm again, its retry wait back to the first."""
        if self._failures[language] >= MAX_ZYGOTE_FAILURES:
            logger.warning("%s zygote works again; %s callbacks start warm", language, language)
        self._failures[language] = 0
        self._retry_after_s[language] = ZYGOTE_RETRY_AFTER_S
        self._retry_at.pop(language, None)

    def _new_failure(self, language: str, err: UnavailableError) -> bool:
        """Whether ``err`` is one more failure of the language's zygote in a row.

        A zygote lost with several spawns under way fails each of them: one failure.
        """
        if not isinstance(err, ZygoteLost):
            return True
        if self._losses_counted.get(language) == err.zygote_pid:
            return False
        self._losses_counted[language] = err.zygote_pid
        return True

    async def reap(self, handle: ChildHandle) -> None:
        if handle.pid in self._cold_pids:
            self._cold_pids.discard(handle.pid)
            await self._cold.reap(handle)
        elif not handle.exited.is_set():
            handle.await_end()  # its zygote's report: the watchdog's while it is owed
            await handle.exited.wait()

    async def close(self) -> None:
        for zygote in (*self._zygotes.values(), *self._other_network.values()):
            await zygote.close()
        await self._cold.close()

    def pid_of(self, language: str, *, other_network: bool = False) -> int | None:
        """The pid of ``language``'s zygote, None until its first callback.

        ``other_network``: the zygote of the policies whose network differs from the default.
        """
        if other_network:
            zygote = self._other_network.get(language)
            return zygote.pid if zygote is not None else None
        return self._zygotes[language].pid

    def warm(self, language: str) -> bool:
        """Whether ``language``'s children start from its zygote (not cold for a while)."""
        return self._failures[language] < MAX_ZYGOTE_FAILURES

    def status(self) -> tuple[ZygoteStatus, ...]:
        """Each language's zygote now (for the metrics and the health page)."""
        return tuple(
            ZygoteStatus(
                language,
                zygote.pid or 0,
                max(0, zygote.starts - 1),
                self.warm(language),
                died=zygote.pid is None and zygote.starts > 0,
            )
            for language, zygote in self._zygotes.items()
        )
