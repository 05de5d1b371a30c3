"""Find sandboxed processes that outlived their run (the leak check every test ends with)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil

from executor.sandbox.process import started_by


def sandboxed_processes(executor_pid: int | None = None) -> list[psutil.Process]:
    """Live (non-zombie) processes started by the executor ``executor_pid`` (default: us)."""
    executor_pid = executor_pid or os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        try:
            if started_by(proc.pid, executor_pid):
                found.append(proc)
        except OSError:
            continue  # gone, or not ours to read
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
