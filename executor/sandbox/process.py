"""Run one sandboxed child: serve its bridge, capture its output, enforce the wall deadline, reap it.

The child is started by a ``Spawner`` (a cold fork+exec, or a fork of the warm zygote;
the executor itself never forks without exec), possibly before its run is asked for
(``prepare_ahead``). Either way it gets a new session, a scrubbed environment, a fresh
0700 working directory (a private tmpfs in the hardened tier), stdin from /dev/null,
and only stdio plus its end of the bridge socketpair.

Supervision policy, in one place: the main process exits, or the wall deadline passes
(SIGTERM to the group, ``grace_s``, SIGKILL); then every process left is killed (the
process group, plus the cell's cgroups, which still list setsid and double-fork
escapes); then the child is reaped (wait4, for its rusage). The ``finally`` block does
the kill, reap and cleanup on every other path too, cancellation included; a prepared
child that will not run is disposed of the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from executor.child import protocol
from executor.model import Limits
from executor.sandbox import limits as sandbox_limits
from executor.sandbox.cgroup import PREFIX as CGROUP_PREFIX
from executor.sandbox.cgroup import CellCgroups
from executor.sandbox.spawners import ChildHandle, Spawner

logger = logging.getLogger(__name__)

READ_CHUNK: Final = 64 << 10
# After the main process ends, how long to wait for the output pipes to reach EOF.
DRAIN_TIMEOUT_S: Final = 2.0
SAFE_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
# Set in every callback's environment, valued with the executor's pid, so a leak check can
# find the processes (escaped ones included) that one executor started.
SANDBOX_MARKER: Final = "CBEXEC_SANDBOX"

CallHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# The languages that run in a child; each slot has one cell (cgroups, uid) per language.
CHILD_LANGUAGES: Final = ("python", "perl")


@dataclass(frozen=True, slots=True)
class IsolationPlan:
    """The hardened tier: what each child hides and keeps, and the uids it runs as."""

    # Existing directories, none inside another: each gets one empty tmpfs.
    masks: tuple[str, ...]
    keep: tuple[str, ...]
    uid_base: int

    def for_cell(self, cell: int) -> dict[str, Any]:
        return {
            "masks": list(self.masks),
            "keep": list(self.keep),
            "uid": self.uid_base + cell,
            "gid": self.uid_base + cell,
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


@dataclass(slots=True)
class CapturedStream:
    """Output kept up to a cap; the rest is read and dropped so the child never blocks."""

    cap: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(slots=True)
class ChildExit:
    """How the child ended, before classification into an Outcome."""

    wait_status: int = 0
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    wall_seconds: float = 0.0
    timed_out: bool = False
    done: dict[str, Any] | None = None
    bridge_error: str = ""
    stdout: CapturedStream = field(default_factory=lambda: CapturedStream(0))
    stderr: CapturedStream = field(default_factory=lambda: CapturedStream(0))
    # Processes still in the cell's cgroup when the main one had ended (killed then).
    escaped_pids: list[int] = field(default_factory=list)
    lost_reason: str = ""
    # Processes of the callback the kernel killed for exceeding the cell's memory cgroup.
    oom_kills: int = 0

    @property
    def exit_code(self) -> int:
        return os.WEXITSTATUS(self.wait_status) if os.WIFEXITED(self.wait_status) else 0

    @property
    def signal(self) -> int:
        return os.WTERMSIG(self.wait_status) if os.WIFSIGNALED(self.wait_status) else 0


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
        return f"/{CGROUP_PREFIX}{executor_pid}/" in cgroups.read()


def child_environment(workdir: str) -> dict[str, str]:
    """The whole environment a callback sees: nothing of the executor's."""
    return {
        "PATH": SAFE_PATH,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # glibc's per-thread arenas make RLIMIT_AS cap threads early (sandbox.md pitfall 4).
        "MALLOC_ARENA_MAX": "2",
        SANDBOX_MARKER: str(os.getpid()),
    }


async def _read_stream(fd: int, sink: CapturedStream) -> None:
    loop = asyncio.get_running_loop()
    eof = loop.create_future()

    def on_readable() -> None:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            sink.feed(chunk)
        elif not eof.done():
            eof.set_result(None)

    os.set_blocking(fd, False)
    loop.add_reader(fd, on_readable)
    try:
        await eof
    finally:
        loop.remove_reader(fd)


def _send_now(sock: socket.socket, frame: bytes) -> bytes:
    """Write what the socket takes without blocking; returns the rest.

    The start frame goes out before any task is scheduled, so a prepared child starts
    on the callback while the executor is still setting up its readers.
    """
    try:
        return frame[sock.send(frame, socket.MSG_DONTWAIT) :]
    except (BlockingIOError, InterruptedError):
        return frame
    except OSError:
        return frame  # the child is gone; the bridge task meets the same error and stops


async def _next_frame(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, buffer: bytearray
) -> dict[str, Any] | None:
    """The child's next frame (what is read beyond it stays in ``buffer``); None at its end.

    The bridge ending between frames, or inside a header, is the callback ending.
    """
    header = protocol.HEADER.size
    size = -1
    while True:
        if size < 0 and len(buffer) >= header:
            (size,) = protocol.HEADER.unpack_from(buffer)
            if size > protocol.MAX_CHILD_FRAME_BYTES:
                raise _BridgeViolation(f"frame of {size} bytes exceeds the 1 MiB frame limit")
        if 0 <= size <= len(buffer) - header:
            body = bytes(buffer[header : header + size])
            del buffer[: header + size]
            return protocol.decode_body(body)
        chunk = await loop.sock_recv(sock, READ_CHUNK)
        if not chunk:
            if size >= 0:
                raise protocol.FrameError("the bridge closed inside a frame")
            return None
        buffer += chunk


class _BridgeViolation(Exception):
    """The child broke the bridge protocol (the message says how)."""


async def _serve_bridge(
    sock: socket.socket, unsent: bytes, on_call: CallHandler, result: ChildExit
) -> None:
    """Finish sending the start frame, answer calls, keep the done frame; stop on EOF or garbage.

    On the socket itself, not asyncio streams: a run exchanges one or two frames, and a
    transport with its reader and writer cost more than the exchange.
    """
    loop = asyncio.get_running_loop()
    buffer = bytearray()
    try:
        if unsent:
            await loop.sock_sendall(sock, unsent)
        while (frame := await _next_frame(loop, sock, buffer)) is not None:
            if frame["type"] == "call":
                await loop.sock_sendall(sock, protocol.encode(await on_call(frame)))
            elif frame["type"] == "done":
                result.done = frame
            else:
                result.bridge_error = f"unexpected frame type {frame['type']!r}"
                return
    except _BridgeViolation as err:
        result.bridge_error = str(err)
    except protocol.FrameError as err:
        result.bridge_error = f"malformed frame: {err}"
    except (ConnectionError, BrokenPipeError):
        pass  # the callback went away mid-reply
    finally:
        # The child sees EOF: a qb call after garbage fails at once instead of waiting.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _has_ended(pid: int) -> bool:
    """Whether ``pid`` has ended, even before its parent has reaped or reported it."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], 0)[0])  # a pidfd reads ready once it exits
    finally:
        os.close(pidfd)


def _signal_group(pgid: int, signum: int) -> None:
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


@dataclass(slots=True)
class _Child:
    """A started, confined child and the executor's ends of its pipes and bridge.

    Until its start frame is sent it only waits (a *prepared* child): everything before
    the callback's code (fork, namespaces, mounts, the uid drop, Perl's start-up) is
    already done.
    """

    handle: ChildHandle
    cell: int
    spec: dict[str, Any]
    # Made (and removed) by the executor; None when it exists only inside the child.
    host_workdir: str | None
    stdout_r: int
    stderr_r: int
    bridge: socket.socket

    def close(self) -> None:
        """Close the executor's ends (again is harmless)."""
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
        self, options: SandboxOptions, spawner: Spawner, *, prepare_ahead: bool = False
    ) -> None:
        self.options = options
        self.spawner = spawner
        self._prepare_ahead = prepare_ahead
        self._prepared: dict[int, asyncio.Task[_Child]] = {}
        self._closing = False
        # Each cell's OOM kill count when its last run ended: the next run's baseline.
        self._oom_kills: dict[int, int] = {}

    @staticmethod
    def cells(slots: int) -> int:
        """Cells (cgroups, uids) needed for ``slots`` concurrent runs."""
        return slots * len(CHILD_LANGUAGES)

    @staticmethod
    def cell(slot: int, language: str) -> int:
        return slot * len(CHILD_LANGUAGES) + CHILD_LANGUAGES.index(language)

    def _launch_spec(self, runtime: dict[str, Any], limits: Limits, cell: int) -> dict[str, Any]:
        cgroups = self.options.cgroups
        isolation = self.options.isolation
        return {
            **runtime,
            "site_paths": list(self.options.site_paths),
            "pid_namespace": self.options.pid_namespace,
            # An empty network namespace per callback, unless the spawner's children
            # already start in one (the zygote enters it once: netns creation is slow).
            "unshare_network": not self.options.network,
            "cgroup_procs": cgroups.procs_files(cell) if cgroups is not None else [],
            # With a dedicated uid per cell, RLIMIT_NPROC counts only this callback.
            "rlimits": sandbox_limits.rlimits(
                limits,
                cap_processes_with_nproc=isolation is not None
                or cgroups is None
                or "pids" not in cgroups.controllers,
            ),
            "isolation": isolation.for_cell(cell) if isolation is not None else None,
            "disk_bytes": limits.disk_bytes,
        }

    def _set_cgroup_limits(self, cell: int, limits: Limits) -> None:
        if self.options.cgroups is not None:
            self.options.cgroups.set_limits(
                cell, processes=limits.max_processes, memory_bytes=limits.memory_bytes
            )

    async def _start(
        self, spec: dict[str, Any], limits: Limits, cell: int, *, ahead: bool = False
    ) -> _Child:
        """Start a child that confines itself and then waits for its start frame.

        A child started ``ahead`` of its run also warms itself up while it waits.
        """
        self._set_cgroup_limits(cell, limits)  # the child joins the cell's cgroups at once
        if self.options.isolation is not None:
            # Made by the child on its private /tmp: nothing on the host to make or remove.
            workdir, host_workdir = f"/tmp/cbexec-run-{secrets.token_hex(6)}", None
        else:
            workdir = host_workdir = tempfile.mkdtemp(prefix="cbexec-run-")
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        parent_sock, child_sock = socket.socketpair()
        parent_sock.setblocking(False)
        try:
            handle = await self.spawner.spawn(
                dict(spec, workdir=workdir, warm_up=ahead),
                env=child_environment(workdir),
                fds=(stdout_w, stderr_w, child_sock.fileno()),
            )
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
        return _Child(handle, cell, spec, host_workdir, stdout_r, stderr_r, parent_sock)

    async def _take(self, spec: dict[str, Any], limits: Limits, cell: int) -> _Child:
        """The cell's prepared child when it fits ``spec`` and still lives, else a new one."""
        pending = self._prepared.pop(cell, None)
        if pending is not None:
            try:
                child = await pending
            except Exception as err:  # noqa: BLE001 - a failed preparation only costs the head start
                logger.warning("preparing a child in cell %d failed: %s", cell, err)
            else:
                if child.spec == spec and not _has_ended(child.handle.pid):
                    return child
                await self._dispose(child)
        return await self._start(spec, limits, cell)

    async def _dispose(self, child: _Child) -> None:
        """Kill every process of a child that will not run, reap it, close our ends, remove its workdir."""
        try:
            await self._kill_everything(child.handle.pid, child.cell)
            child.close()  # EOF on the bridge too, for a child that waits for its start frame
            await self.spawner.reap(child.handle)
        finally:
            child.close()
            await _remove_workdir(child.host_workdir)

    def _prepare(self, spec: dict[str, Any], limits: Limits, cell: int) -> None:
        if self._prepare_ahead and not self._closing and cell not in self._prepared:
            self._prepared[cell] = asyncio.create_task(self._start(spec, limits, cell, ahead=True))

    @property
    def prepared(self) -> int:
        """Children started ahead and not yet taken (those still starting included)."""
        return len(self._prepared)

    async def prepared_pids(self) -> list[int]:
        """Pids of the children waiting for a run, once the ones being started are up."""
        if self._prepared:
            await asyncio.wait(self._prepared.values())
        return [
            task.result().handle.pid
            for task in self._prepared.values()
            if not task.cancelled() and task.exception() is None
        ]

    async def close(self) -> None:
        """Stop preparing and dispose of every prepared child (after the last run)."""
        self._closing = True
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
        runtime: dict[str, Any],
        limits: Limits,
        slot: int,
        start: dict[str, Any],
        on_call: CallHandler,
    ) -> ChildExit:
        """Run one child to completion; every process it made is gone when this returns."""
        result = ChildExit(
            stdout=CapturedStream(limits.output_bytes), stderr=CapturedStream(limits.output_bytes)
        )
        cell = self.cell(slot, runtime["language"])
        spec = self._launch_spec(runtime, limits, cell)
        child = await self._take(spec, limits, cell)
        handle = child.handle
        cgroups = self.options.cgroups
        tasks: list[asyncio.Task[None]] = []
        reaped = False
        try:
            self._set_cgroup_limits(cell, limits)  # this run's own, whoever started the child
            oom_kills_before = self._oom_kills_seen(cell)
            began = time.monotonic()
            unsent = _send_now(child.bridge, protocol.encode(start))
            readers = [
                asyncio.create_task(_read_stream(child.stdout_r, result.stdout)),
                asyncio.create_task(_read_stream(child.stderr_r, result.stderr)),
            ]
            bridge = asyncio.create_task(_serve_bridge(child.bridge, unsent, on_call, result))
            tasks = [*readers, bridge]
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that races with the awaited event.
            try:
                async with asyncio.timeout(limits.wall_seconds):
                    await handle.exited.wait()
            except TimeoutError:
                result.timed_out = True
                _signal_group(handle.pid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.options.grace_s):
                        await handle.exited.wait()
            result.escaped_pids = await self._kill_everything(handle.pid, cell)
            await self.spawner.reap(handle)
            reaped = True
            result.wall_seconds = time.monotonic() - began
            result.wait_status = handle.wait_status
            result.cpu_seconds = handle.cpu_seconds
            result.peak_rss_bytes = handle.peak_rss_bytes
            result.lost_reason = handle.lost_reason
            if cgroups is not None:
                self._oom_kills[cell] = cgroups.oom_kills(cell)
                result.oom_kills = self._oom_kills[cell] - oom_kills_before
            # Everything that could hold the pipes is dead, so EOF is near (often read already).
            for waited in (readers, [bridge]):
                if not all(task.done() for task in waited):
                    await asyncio.wait(waited, timeout=DRAIN_TIMEOUT_S)
        finally:
            # Shielded: a second cancellation (a server stopping while a cancelled run
            # unwinds) must not cut the cleanup short; it then finishes on its own.
            await asyncio.shield(self._finish(child, tasks, reaped=reaped))
        self._prepare(spec, limits, cell)
        return result

    async def _finish(
        self, child: _Child, tasks: list[asyncio.Task[None]], *, reaped: bool
    ) -> None:
        """Kill and reap the child unless done already, stop its tasks, close our ends, remove its workdir."""
        try:
            if not reaped:
                await self._kill_everything(child.handle.pid, child.cell)
                await self.spawner.reap(child.handle)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            child.close()
            await _remove_workdir(child.host_workdir)

    def _oom_kills_seen(self, cell: int) -> int:
        """The cell's OOM kill count before this run, read from the cgroup only the first time."""
        cgroups = self.options.cgroups
        if cgroups is None:
            return 0
        if cell not in self._oom_kills:
            self._oom_kills[cell] = cgroups.oom_kills(cell)
        return self._oom_kills[cell]

    async def _kill_everything(self, pgid: int, cell: int) -> list[int]:
        """SIGKILL the child's group and every process left in its cell's cgroup."""
        _signal_group(pgid, signal.SIGKILL)
        cgroups = self.options.cgroups
        if cgroups is None or not cgroups.pids(cell):
            return []  # the common case: nothing left, no thread needed
        return await asyncio.to_thread(cgroups.kill_all, cell)


async def _remove_workdir(workdir: str | None) -> None:
    """Remove the working directory: inline when empty, else in a thread (it may be huge)."""
    if workdir is None:
        return
    try:
        os.rmdir(workdir)
    except OSError:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
