"""Find sandboxed processes that outlived their run (the leak check every test ends with)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil

from executor.sandbox.process import SANDBOX_MARKER


def in_our_sandbox(proc: psutil.Process, executor_pid: int) -> bool:
    """Whether ``proc`` was started by that executor's sandbox.

    Two marks, since neither sees everything: the environment marker (a fork of the
    zygote sets it with putenv, which /proc/<pid>/environ does not show), and membership
    of the executor's cell cgroups (which the launcher joins only after a PID namespace
    is made, and which does not exist without a writable cgroup).
    """
    if proc.environ().get(SANDBOX_MARKER) == str(executor_pid):
        return True
    with open(f"/proc/{proc.pid}/cgroup") as cgroups:
        return f"/cbexec-{executor_pid}/" in cgroups.read()


def sandboxed_processes(executor_pid: int | None = None) -> list[psutil.Process]:
    """Live (non-zombie) processes started by the executor ``executor_pid`` (default: us)."""
    executor_pid = executor_pid or os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        try:
            if in_our_sandbox(proc, executor_pid):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def wait_until_no_sandboxed_processes(
    timeout_s: float = 5.0,
    executor_pid: int | None = None,
    allowed: Callable[[int], bool] = lambda pid: False,
) -> list[psutil.Process]:
    """Poll until none but ``allowed`` pids are left; returns the survivors (empty when clean)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in sandboxed_processes(executor_pid) if not allowed(p.pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
