"""Classify how a child ended into an Outcome, with a message a person can act on.

The runner gathers the evidence (``ChildExit``: the wait status and rusage, the done
frame, what the executor itself did) and answers with the classified ``SandboxResult``.

Order matters: what the executor itself did (the wall deadline, a stop) wins over what
the kernel did (CPU limit), which wins over what the callback reported (its ``done``
frame), which wins over the bare exit status.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass, field

from executor.child.protocol import DoneFrame
from executor.model import Failure, Limits, Outcome, Usage
from executor.sandbox.capture import CapturedStream


@dataclass(slots=True)
class ChildExit:
    """The evidence of how the child ended, gathered by the runner before classification."""

    wait_status: int = 0
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    wall_seconds: float = 0.0
    timed_out: bool = False
    # Why the run was stopped (RunStop), if it was.
    stop_reason: str = ""
    done: DoneFrame | None = None
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


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """What one sandboxed run produced, classified: ``SandboxRunner.run``'s answer.

    ``usage`` has no queue time (the dispatcher's); ``done``, ``bridge_error`` and
    ``escaped_pids`` are evidence kept for logs and tests.
    """

    outcome: Outcome
    failure: Failure | None
    exit_code: int
    signal: int
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    usage: Usage
    done: DoneFrame | None = None
    bridge_error: str = ""
    escaped_pids: tuple[int, ...] = ()


def sandbox_result(child: ChildExit, limits: Limits) -> SandboxResult:
    """The classified result of the evidence ``child``."""
    outcome, failure = classify(child, limits)
    return SandboxResult(
        outcome=outcome,
        failure=failure,
        exit_code=child.exit_code,
        signal=child.signal,
        stdout=child.stdout.text(),
        stderr=child.stderr.text(),
        stdout_truncated=child.stdout.truncated,
        stderr_truncated=child.stderr.truncated,
        usage=Usage(child.wall_seconds, child.cpu_seconds, child.peak_rss_bytes),
        done=child.done,
        bridge_error=child.bridge_error,
        escaped_pids=tuple(child.escaped_pids),
    )


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
    if child.oom_kills and outcome in (Outcome.FAILED, Outcome.KILLED) and not child.stop_reason:
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
    if child.stop_reason:
        return Outcome.KILLED, Failure(child.stop_reason)
    if child.lost_reason:
        return Outcome.KILLED, Failure(child.lost_reason)
    if _hit_cpu_limit(child, limits):
        return Outcome.CPU_LIMIT, Failure(
            f"the callback exceeded its CPU limit of {limits.cpu_seconds:g}s "
            f"(used {child.cpu_seconds:.2f}s)"
        )
    done = child.done
    if done is not None:
        status = done["status"]
        exc = Failure(
            message=done.get("message", ""),
            exception_type=done.get("exception_type", ""),
            traceback=done.get("traceback", ""),
        )
        if status == "ok":
            return Outcome.SUCCEEDED, None
        if status == "exit":
            code = done.get("exit_code", 0)
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
