"""What the cold launcher's shim reports of its callback: its pid, then its wait status and rusage.

On the cold path the launcher forks the callback and stays its parent, a *shim*, as a
zygote is for its children (``launcher._shim``). It writes what a zygote sends
(``protocol.ZygoteStarted``, then ``ZygoteExited`` once it has reaped the callback), one
JSON object a line, on a pipe only it holds: the executor's own ``wait4`` of the shim
would give the shim's figures, its Python start-up in the CPU time and, in the peak
RSS, the executor's high-water mark from before the exec (the kernel keeps it across
exec). The pipe is never written by the callback: it is closed in it at the fork.

When the executor ends a cold child that has not exited (the deadline's grace is over,
a stop, a prepared child that will not run), it kills the callback first
(``kill_callback``) and gives the shim a moment to reap it and report, before the
SIGKILL of the whole process group: killed together, the shim could not report, and
the callback's zombie would be left to init to reap, counted in its cell's pids cgroup
and its uid's RLIMIT_NPROC until then. The callback's figures are also read from /proc
just before that kill, for a shim that still does not report.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

from executor.child.protocol import ZygoteExited
from executor.sandbox.usage import live_usage


@dataclass(slots=True)
class ShimReport:
    """The read end of one shim's report pipe (non-blocking), and what came on it."""

    fd: int
    shim_pid: int
    callback_pid: int = 0
    exited: ZygoteExited | None = None
    # The callback's (CPU seconds, peak RSS bytes) just before the executor killed it.
    sampled: tuple[float, int] | None = None
    _partial: bytes = b""

    def read(self) -> None:
        """Take the lines the shim has written so far; never blocks."""
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # BlockingIOError: nothing more for now
                break
            if not chunk:
                break
            self._partial += chunk
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if message["type"] == "started":
                self.callback_pid = message["pid"]
            elif message["type"] == "exited":
                self.exited = message

    def callback(self) -> int:
        """The callback's pid, once the shim has reported it (0 until then)."""
        if not self.callback_pid:
            self.read()
        return self.callback_pid

    def kill_callback(self) -> bool:
        """SIGKILL the callback, its figures read first; False when it has ended or is not known yet.

        Through a pidfd opened before /proc shows the process is still the shim's child:
        the signal cannot reach a later process that got its pid.
        """
        self.read()
        if self.exited is not None or not self.callback_pid:
            return False
        try:
            pidfd = os.pidfd_open(self.callback_pid)
        except OSError:
            return False
        try:
            sampled = live_usage(self.callback_pid, parent=self.shim_pid)
            if sampled is None:
                return False  # exited (its shim reports it), or not the callback any more
            self.sampled = sampled
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            return False
        finally:
            os.close(pidfd)
        return True

    def figures(self) -> tuple[float, int]:
        """The callback's (CPU seconds, peak RSS bytes), once the shim has been reaped.

        (0.0, 0) when neither the shim's report nor a sample has them: a shim killed by
        someone else before its callback ended.
        """
        self.read()
        if self.exited is not None:
            return self.exited["cpu"], self.exited["maxrss_kib"] * 1024
        return self.sampled or (0.0, 0)

    def close(self) -> None:
        os.close(self.fd)
