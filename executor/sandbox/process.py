"""Run one sandboxed child: serve its bridge, capture its output, enforce the wall deadline, reap it.

The child is started by a ``Spawner`` (a cold fork+exec, or a fork of the warm zygote;
the executor itself never forks without exec). Either way it gets a new session, a
scrubbed environment, a fresh 0700 working directory, stdin from /dev/null, and only
stdio plus its end of the bridge socketpair.

Supervision policy, in one place: the main process exits, or the wall deadline passes
(SIGTERM to the group, ``grace_s``, SIGKILL); then every process left is killed (the
process group, plus the slot's pids cgroup, which still lists setsid and double-fork
escapes); then the child is reaped (wait4, for its rusage). The ``finally`` block does
the kill, reap and cleanup on every other path too, cancellation included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
from executor.sandbox.cgroup import SlotCgroups
from executor.sandbox.spawners import Spawner

logger = logging.getLogger(__name__)

READ_CHUNK: Final = 64 << 10
# After the main process ends, how long to wait for the output pipes to reach EOF.
DRAIN_TIMEOUT_S: Final = 2.0
SAFE_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
# Set in every callback's environment, valued with the executor's pid, so a leak check can
# find the processes (escaped ones included) that one executor started.
SANDBOX_MARKER: Final = "CBEXEC_SANDBOX"

CallHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class IsolationPlan:
    """The hardened tier: what each child hides and keeps, and the uids it runs as."""

    masks: tuple[str, ...]
    keep: tuple[str, ...]
    uid_base: int

    def for_slot(self, slot: int) -> dict[str, Any]:
        return {
            "masks": list(self.masks),
            "keep": list(self.keep),
            "uid": self.uid_base + slot,
            "gid": self.uid_base + slot,
        }


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """Host-level choices, probed once at start-up."""

    site_paths: tuple[str, ...]
    pid_namespace: bool
    network: bool
    grace_s: float
    cgroups: SlotCgroups | None
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
    # Processes still in the slot's cgroup when the main one had ended (killed then).
    escaped_pids: list[int] = field(default_factory=list)
    lost_reason: str = ""
    # Processes of the callback the kernel killed for exceeding the slot's memory cgroup.
    oom_kills: int = 0

    @property
    def exit_code(self) -> int:
        return os.WEXITSTATUS(self.wait_status) if os.WIFEXITED(self.wait_status) else 0

    @property
    def signal(self) -> int:
        return os.WTERMSIG(self.wait_status) if os.WIFSIGNALED(self.wait_status) else 0


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


async def _serve_bridge(
    sock: socket.socket, start: dict[str, Any], on_call: CallHandler, result: ChildExit
) -> None:
    """Send the start frame, answer calls, keep the done frame; stop on EOF or garbage."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        writer.write(protocol.encode(start))
        await writer.drain()
        while True:
            try:
                header = await reader.readexactly(protocol.HEADER.size)
            except asyncio.IncompleteReadError:
                return  # the callback ended (or closed the bridge)
            (size,) = protocol.HEADER.unpack(header)
            if size > protocol.MAX_CHILD_FRAME_BYTES:
                result.bridge_error = f"frame of {size} bytes exceeds the 1 MiB frame limit"
                return
            frame = protocol.decode_body(await reader.readexactly(size))
            if frame["type"] == "call":
                writer.write(protocol.encode(await on_call(frame)))
                await writer.drain()
            elif frame["type"] == "done":
                result.done = frame
            else:
                result.bridge_error = f"unexpected frame type {frame['type']!r}"
                return
    except (protocol.FrameError, asyncio.IncompleteReadError) as err:
        result.bridge_error = f"malformed frame: {err}"
    except (ConnectionError, BrokenPipeError):
        pass  # the callback went away mid-reply
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            await writer.wait_closed()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class SandboxRunner:
    """Runs children under the options probed at start-up, started by ``spawner``."""

    def __init__(self, options: SandboxOptions, spawner: Spawner) -> None:
        self.options = options
        self.spawner = spawner

    def _launch_spec(self, runtime: dict[str, Any], limits: Limits, slot: int) -> dict[str, Any]:
        cgroups = self.options.cgroups
        isolation = self.options.isolation
        if cgroups is not None:
            cgroups.set_limits(slot, processes=limits.max_processes, memory_bytes=limits.memory_bytes)
        return {
            **runtime,
            "site_paths": list(self.options.site_paths),
            "pid_namespace": self.options.pid_namespace,
            # An empty network namespace per callback, unless the spawner's children
            # already start in one (the zygote enters it once: netns creation is slow).
            "unshare_network": not self.options.network,
            "cgroup_procs": cgroups.procs_files(slot) if cgroups is not None else [],
            # With a dedicated uid per slot, RLIMIT_NPROC counts only this callback.
            "rlimits": sandbox_limits.rlimits(
                limits,
                cap_processes_with_nproc=isolation is not None
                or cgroups is None or "pids" not in cgroups.controllers,
            ),
            "isolation": isolation.for_slot(slot) if isolation is not None else None,
            "disk_bytes": limits.disk_bytes,
        }

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
        workdir = tempfile.mkdtemp(prefix="cbexec-run-")
        if self.options.isolation is not None:
            owner = self.options.isolation.uid_base + slot
            os.chown(workdir, owner, owner)
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        parent_sock, child_sock = socket.socketpair()
        cgroups = self.options.cgroups
        oom_kills_before = cgroups.oom_kills(slot) if cgroups is not None else 0
        began = time.monotonic()
        try:
            handle = await self.spawner.spawn(
                self._launch_spec(runtime, limits, slot),
                cwd=workdir,
                env=child_environment(workdir),
                fds=(stdout_w, stderr_w, child_sock.fileno()),
            )
        except BaseException:
            for fd in (stdout_r, stderr_r):
                os.close(fd)
            parent_sock.close()
            await _remove_workdir(workdir)
            raise
        finally:
            # The child has its own copies now; ours would keep the pipes from reaching EOF.
            os.close(stdout_w)
            os.close(stderr_w)
            child_sock.close()
        readers = [
            asyncio.create_task(_read_stream(stdout_r, result.stdout)),
            asyncio.create_task(_read_stream(stderr_r, result.stderr)),
        ]
        bridge = asyncio.create_task(_serve_bridge(parent_sock, start, on_call, result))
        reaped = False
        try:
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
            result.escaped_pids = await self._kill_everything(handle.pid, slot)
            await self.spawner.reap(handle)
            reaped = True
            result.wall_seconds = time.monotonic() - began
            result.wait_status = handle.wait_status
            result.cpu_seconds = handle.cpu_seconds
            result.peak_rss_bytes = handle.peak_rss_bytes
            result.lost_reason = handle.lost_reason
            if cgroups is not None:
                result.oom_kills = cgroups.oom_kills(slot) - oom_kills_before
            # Everything that could hold the pipes is dead, so EOF is near.
            await asyncio.wait(readers, timeout=DRAIN_TIMEOUT_S)
            await asyncio.wait([bridge], timeout=DRAIN_TIMEOUT_S)
        finally:
            if not reaped:
                await self._kill_everything(handle.pid, slot)
                await self.spawner.reap(handle)
            for task in (*readers, bridge):
                task.cancel()
            await asyncio.gather(*readers, bridge, return_exceptions=True)
            for fd in (stdout_r, stderr_r):
                os.close(fd)
            parent_sock.close()
            await _remove_workdir(workdir)
        return result

    async def _kill_everything(self, pgid: int, slot: int) -> list[int]:
        """SIGKILL the child's group and every process left in its slot's cgroup."""
        _signal_group(pgid, signal.SIGKILL)
        cgroups = self.options.cgroups
        if cgroups is None or not cgroups.pids(slot):
            return []  # the common case: nothing left, no thread needed
        return await asyncio.to_thread(cgroups.kill_all, slot)


async def _remove_workdir(workdir: str) -> None:
    """Remove the working directory: inline when empty, else in a thread (it may be huge)."""
    try:
        os.rmdir(workdir)
    except OSError:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
