"""A run's output and frames are taken to their end once every process of its cell is dead.

Then nothing can write to the pipes or the bridge any more, so what they hold is final:
the run is answered without waiting for an EOF that a write end held elsewhere keeps
back (one a callback hid in flight in a unix socket, which only the kernel's garbage
collector closes; here one the test holds, outside the cell, which nothing closes), and
nothing written before the end is lost. On the warm (zygote) and the cold path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Iterator

import pytest

from executor.sandbox import process
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack
from tests.helpers.processes import sandboxed_processes
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

SUCCEEDED = executor_pb2.Outcome.OUTCOME_SUCCEEDED
PIDFD_GETFD = 438  # the syscall's number on x86-64 and arm64 alike


# Writes more than a pipe holds and a line each without a newline, says it is ready (a
# file in its working directory) and waits for the test's SIGUSR1 (blocked first, so one
# sent early waits); os._exit skips the bootstrap's end mark: the run ends at its exit.
CODE = (
    "import os, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
    "sys.stdout.write('o' * 100_000 + '\\nlast line')\n"
    "sys.stderr.write('warning')\n"
    "sys.stdout.flush(); sys.stderr.flush()\n"
    "open('ready', 'w').close()\n"
    "signal.sigwait({signal.SIGUSR1})\n"
    "os._exit(0)\n"
)


def ready_callback() -> int | None:
    """The callback's process once it is waiting for the go; None before."""
    for proc in sandboxed_processes():
        if os.path.exists(f"/proc/{proc.pid}/cwd/ready"):
            return proc.pid
    return None


@contextlib.contextmanager
def ends_held_outside_the_cell(pid: int) -> Iterator[None]:
    """Hold writers of ``pid``'s stdout and stderr, and its end of the bridge, until the block ends."""
    held = [os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC) for fd in (1, 2)]
    try:
        pidfd = os.pidfd_open(pid)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            bridge = libc.syscall(PIDFD_GETFD, pidfd, 3, 0)
            if bridge < 0:
                raise OSError(ctypes.get_errno(), "pidfd_getfd of the bridge")
            held.append(bridge)
        finally:
            os.close(pidfd)
        yield
    finally:
        for fd in held:
            os.close(fd)


async def test_a_run_whose_ends_are_held_elsewhere_is_answered_with_all_its_output(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by a tester: the run waited DRAIN_TIMEOUT_S (2 s) for EOFs after its last
    # process died, its slot held, while its wall time said 2 ms. An hour here: a run
    # still waiting for them would not be answered within the test's time.
    monkeypatch.setattr(process, "DRAIN_TIMEOUT_S", 3600.0)
    (job,) = stack.supervisor.submit([{"name": "held", "user": "alice"}])
    running = asyncio.create_task(
        stack.client.execute_callback(language="python", code=CODE, job=job)
    )
    pid = await eventually(ready_callback)
    assert pid is not None, "the callback did not start"

    with ends_held_outside_the_cell(pid):
        os.kill(pid, signal.SIGUSR1)
        async with asyncio.timeout(60):
            response = await running

    assert response.outcome == SUCCEEDED, (response.failure.message, response.stderr)
    assert response.stdout == "o" * 100_000 + "\nlast line"
    assert response.stderr == "warning"
