"""Classify how a child ended into an Outcome, with a message a person can act on.

Order matters: what the executor itself did (the wall deadline) wins over what the
kernel did (CPU limit), which wins over what the callback reported (its ``done`` frame),
which wins over the bare exit status.
"""

from __future__ import annotations

import math
import signal

from executor.model import Failure, Limits, Outcome
from executor.sandbox.process import ChildExit

# The launcher's SIGXCPU handler exit code, used when the callback is PID 1 of its own
# namespace (PID 1 ignores SIGXCPU without a handler, sandbox.md pitfall 3).
EXIT_ON_SIGXCPU = 128 + signal.SIGXCPU
EXIT_LAUNCH_FAILED = 121
_MEMORY_MARKERS = ("MemoryError", "Out of memory!", "Cannot allocate memory")


def describe_signal(signum: int) -> str:
    """'signal 11 (SIGSEGV)', as trio and jupyter word it."""
    try:
        return f"signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"signal {signum}"


def _hit_cpu_limit(child: ChildExit, limits: Limits) -> bool:
    if child.signal == signal.SIGXCPU:
        return True
    if child.exit_code == EXIT_ON_SIGXCPU and child.done is None:
        # Only the SIGXCPU handler exits 152 without a done frame (sys.exit(152) and Perl's
        # exit 152 report one first).
        return True
    # The hard limit's SIGKILL. The kernel enforces RLIMIT_CPU on tick-sampled time while
    # wait4 reports precise runtime, so a process stopped at the limit can show ~10% less.
    soft = max(1, math.ceil(limits.cpu_seconds))
    return child.signal == signal.SIGKILL and child.cpu_seconds >= soft - max(0.1, 0.1 * soft)


def classify(child: ChildExit, limits: Limits) -> tuple[Outcome, Failure | None]:
    """The outcome and, unless it succeeded, why.

    A run that failed after the kernel OOM-killed one of its processes (the cell's
    memory cgroup: all processes together) failed for memory, whatever the main process
    then reported; one that succeeded anyway succeeded.
    """
    outcome, failure = _classify_exit(child, limits)
    if child.oom_kills and outcome in (Outcome.FAILED, Outcome.KILLED):
        return Outcome.MEMORY_LIMIT, Failure(
            f"the callback's processes together exceeded the memory limit of "
            f"{limits.memory_bytes} bytes: the kernel killed {child.oom_kills} of them"
        )
    return outcome, failure


def _classify_exit(child: ChildExit, limits: Limits) -> tuple[Outcome, Failure | None]:
    if child.timed_out:
        return Outcome.WALL_TIMEOUT, Failure(
            f"the callback exceeded its wall-clock limit of {limits.wall_seconds:g}s and was killed"
        )
    if child.lost_reason:
        return Outcome.KILLED, Failure(child.lost_reason)
    if _hit_cpu_limit(child, limits):
        return Outcome.CPU_LIMIT, Failure(
            f"the callback exceeded its CPU limit of {limits.cpu_seconds:g}s "
            f"(used {child.cpu_seconds:.2f}s)"
        )
    done = child.done
    if done is not None:
        status = done.get("status")
        exc = Failure(
            message=str(done.get("message", "")),
            exception_type=str(done.get("exception_type", "")),
            traceback=str(done.get("traceback", "")),
        )
        if status == "ok":
            return Outcome.SUCCEEDED, None
        if status == "exit":
            code = int(done.get("exit_code", 0))
            if code == 0:
                return Outcome.SUCCEEDED, None
            return Outcome.FAILED, Failure(f"the callback exited with status {code}")
        if status == "memory":
            return Outcome.MEMORY_LIMIT, Failure(
                f"the callback ran out of memory (limit {limits.memory_bytes} bytes)",
                exc.exception_type,
                exc.traceback,
            )
        if status == "rejected":
            return Outcome.REJECTED, exc
        if status == "exception":
            return Outcome.FAILED, exc
    if any(marker in child.stderr.text()[-4096:] for marker in _MEMORY_MARKERS):
        return Outcome.MEMORY_LIMIT, Failure(
            f"the callback ran out of memory (limit {limits.memory_bytes} bytes)"
        )
    if child.signal:
        return Outcome.KILLED, Failure(
            f"the callback was killed by {describe_signal(child.signal)}"
        )
    if child.exit_code == 0:
        return Outcome.SUCCEEDED, None
    if child.exit_code == EXIT_LAUNCH_FAILED:
        return Outcome.FAILED, Failure("the sandbox could not start the callback")
    return Outcome.FAILED, Failure(f"the callback exited with status {child.exit_code}")
