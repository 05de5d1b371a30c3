"""Classify how a child ended into an Outcome, with a message a person can act on.

The runner gathers the evidence (``ChildExit``: the wait status and rusage, the done
frame, what the executor itself did) and answers with the classified ``SandboxResult``.

Order matters, and the child's word never beats the kernel's: what the executor itself
did (the wall deadline, a stop, a child that broke the bridge protocol) wins over what
the kernel did (a signal, the CPU limit, OOM kills), which wins over what the callback
reported (its ``done`` frame). The frame is believed only where the kernel agrees: a
process that reported success and then died of a signal, or exited with another status
than the one its frame implies, is classified by the kernel's evidence; ``REJECTED``
("never ran") only when the code made no qb call. Usage always comes from the kernel
(wait4's rusage of the callback's process, reported by its parent: the zygote, or the cold
launcher's shim; or /proc's figures at its end mark), never from the child.
Classification never raises: every frame was checked against its schema before it was
kept as evidence.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Final

from executor.bounds import (
    MAX_EXCEPTION_TYPE_CHARS,
    MAX_FAILURE_MESSAGE_BYTES,
    MAX_TRACEBACK_BYTES,
    cut,
    cut_utf8,
    cut_utf8_end,
)
from executor.child.protocol import DoneFrame
from executor.model import Failure, Limits, Outcome, Usage
from executor.sandbox.capture import CapturedStream
from executor.sandbox.limits import enforced_cpu_seconds


@dataclass(slots=True)
class ChildExit:
    """The evidence of how the child ended, gathered by the runner before classification."""

    wait_status: int = 0
    # The main process's CPU time with its reaped children's (wait4, /proc at the end
    # mark): what RLIMIT_CPU, per process, is judged on.
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    wall_seconds: float = 0.0
    timed_out: bool = False
    # Why the run was stopped (RunStop), if it was.
    stop_reason: str = ""
    done: DoneFrame | None = None
    bridge_error: str = ""
    # qb call frames the child sent (a callback that made any has run).
    calls: int = 0
    # The launcher's (or a zygote child's) ``launch_failed`` reason, when it sent one,
    # and the errno of the failure when it was an OSError (EAGAIN: out of processes).
    launch_failure: str = ""
    launch_errno: int = 0
    # The kernel's word that the child's end of the bridge was closed with the start
    # frame not (wholly) read: sending it failed (EPIPE), or with no call answered, a
    # read found the child's end released with data left in it (ECONNRESET). Its
    # callback never had its code, so it cannot have run.
    start_unread: bool = False
    stdout: CapturedStream = field(default_factory=lambda: CapturedStream(0))
    stderr: CapturedStream = field(default_factory=lambda: CapturedStream(0))
    # Processes still in the cell's cgroup when the main one had ended (killed then).
    escaped_pids: list[int] = field(default_factory=list)
    lost_reason: str = ""
    # Processes of the callback the kernel killed for exceeding the cell's memory cgroup.
    oom_kills: int = 0
    # The cell cgroup's CPU time when the run began (None where the kernel keeps none),
    # and what it had grown by once every process of the run was killed.
    cell_cpu_before: float | None = None
    cell_cpu_seconds: float | None = None

    @property
    def run_cpu_seconds(self) -> float:
        """The CPU the run's usage reports: its cell's, unless its main process shows more.

        The cell counts every process of the run, one nobody reaped included (a forked
        process ignoring SIGTERM, killed at the wall limit); the main process's figure
        counts a prepared child's start-up, from before the cell's count began.
        """
        return max(self.cpu_seconds, self.cell_cpu_seconds or 0.0)

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
    # A run answered at its child's end mark: the kill, reap and release still under way
    # (``SandboxRunner.run``); whoever holds the run's slot keeps it until this is done.
    finishing: Awaitable[None] | None = field(default=None, compare=False)


def _bounded(failure: Failure | None) -> Failure | None:
    """The failure with each field cut to its stated size (its text comes from the callback)."""
    if failure is None:
        return None
    return Failure(
        cut_utf8(failure.message, MAX_FAILURE_MESSAGE_BYTES),
        cut(failure.exception_type, MAX_EXCEPTION_TYPE_CHARS),
        cut_utf8_end(failure.traceback, MAX_TRACEBACK_BYTES),
    )


def sandbox_result(child: ChildExit, limits: Limits) -> SandboxResult:
    """The classified result of the evidence ``child``, every text within its stated size."""
    outcome, failure = classify(child, limits)
    stdout, stderr = child.stdout.text(), child.stderr.text()  # may set *.truncated
    return SandboxResult(
        outcome=outcome,
        failure=_bounded(failure),
        exit_code=child.exit_code,
        signal=child.signal,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=child.stdout.truncated,
        stderr_truncated=child.stderr.truncated,
        usage=Usage(child.wall_seconds, child.run_cpu_seconds, child.peak_rss_bytes),
        done=child.done,
        bridge_error=child.bridge_error,
        escaped_pids=tuple(child.escaped_pids),
    )


# The launcher's SIGXCPU handler exit code, used when the callback is PID 1 of its own
# namespace (PID 1 ignores SIGXCPU without a handler, sandbox.md pitfall 3).
EXIT_ON_SIGXCPU = 128 + signal.SIGXCPU
EXIT_LAUNCH_FAILED = 121
# The Python bootstrap's, when an exception escaped it after the start frame came: the
# callback may have run, but how it ended was not reported (python_bootstrap.py).
EXIT_REPORT_FAILED = 122
# How both bootstraps exit when their start frame or the callback's code is refused.
EXIT_BAD_START = 2
_MEMORY_MARKERS = ("MemoryError", "Out of memory!", "Cannot allocate memory")


def describe_signal(signum: int) -> str:
    """'signal 11 (SIGSEGV)', as trio and jupyter word it."""
    try:
        return f"signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"signal {signum}"


def _hit_cpu_limit(child: ChildExit, limits: Limits) -> bool:
    """Whether the kernel ended the child for its CPU time (never the child's word alone).

    Judged on the main process's figure, never its cell's: RLIMIT_CPU is per process,
    and what processes it did not reap spent ends nobody's run with SIGXCPU.
    """
    if child.signal == signal.SIGXCPU:
        return True
    soft = enforced_cpu_seconds(limits)
    # SIGXCPU's handler (a PID 1 has one) exits 152: it counts only with the CPU time to
    # show for it (`exit 152` alone is just an exit). The kernel enforces RLIMIT_CPU on
    # tick-sampled time while wait4 reports precise runtime, so a process stopped at the
    # limit can show less than the limit: a quarter of it is allowed for.
    if child.exit_code == EXIT_ON_SIGXCPU and not child.signal:
        return child.cpu_seconds >= 0.75 * soft
    # The hard limit's SIGKILL, a second after the soft one.
    return child.signal == signal.SIGKILL and child.cpu_seconds >= soft - max(0.1, 0.1 * soft)


# The exit status each done status implies (bootstrap.py and bootstrap.pl): the frame is
# believed only when the process ended that way.
_EXIT_OF_STATUS: Final = {
    "ok": 0,
    "exception": 1,
    "memory": 1,
    "rejected": EXIT_BAD_START,
    "terminated": 128 + signal.SIGTERM,
}


def expected_exit(done: DoneFrame) -> int:
    """The exit status (0-255) a process that sent ``done`` ends with."""
    if done["status"] == "exit":
        return done.get("exit_code", 0) & 0xFF
    return _EXIT_OF_STATUS[done["status"]]


def launch_failed(child: ChildExit) -> bool:
    """Whether the sandbox could not start the callback: said on the bridge, and the kernel agrees.

    The launcher says so (a ``launch_failed`` frame, then exit 121) only before the
    start frame is read; the frame is believed only when the kernel shows the start
    frame was never read (``start_unread``). Any other exit 121 (``os._exit(121)``,
    ``CORE::exit(121)``, ``END { $? = 121 }``) is the callback's own exit status.
    """
    return (
        child.exit_code == EXIT_LAUNCH_FAILED
        and bool(child.launch_failure)
        and child.start_unread
        and child.done is None
        and not child.calls
    )


def memory_too_low(limits: Limits) -> Failure:
    """Why a run whose process could not start within its memory limit never ran."""
    return Failure(
        f"the callback never ran: its memory limit of {limits.memory_bytes} bytes is less "
        "than its process needs to start"
    )


def classify(child: ChildExit, limits: Limits) -> tuple[Outcome, Failure | None]:
    """The outcome and, unless it succeeded, why.

    A run that failed after the kernel OOM-killed one of its processes (the cell's
    memory cgroup: all processes together) failed for memory, whatever the main process
    then reported; one that succeeded anyway succeeded.
    """
    outcome, failure = _classify_exit(child, limits)
    never_ran = child.start_unread and child.done is None and not child.calls
    if never_ran and outcome == Outcome.KILLED and child.signal == signal.SIGSEGV:
        # Before its code: the kernel's SIGSEGV of an exec (perl's, cold) or a stack
        # that RLIMIT_AS, the memory limit, left no room for.
        return Outcome.MEMORY_LIMIT, memory_too_low(limits)
    if child.oom_kills and outcome in (Outcome.FAILED, Outcome.KILLED) and not child.stop_reason:
        if never_ran:
            return Outcome.MEMORY_LIMIT, memory_too_low(limits)
        message = (
            f"the callback's processes together exceeded the memory limit of "
            f"{limits.memory_bytes} bytes: the kernel killed {child.oom_kills} of them"
        )
        if child.signal and child.signal != signal.SIGKILL:  # SIGKILL: the OOM kill itself
            message += f", and then the callback was killed by {describe_signal(child.signal)}"
        return Outcome.MEMORY_LIMIT, Failure(message)
    return outcome, failure


def _classify_exit(child: ChildExit, limits: Limits) -> tuple[Outcome, Failure | None]:
    if child.timed_out:
        exceeded = f"the callback exceeded its wall-clock limit of {limits.wall_seconds:g}s"
        if child.signal or child.exit_code == 128 + signal.SIGTERM:  # the runtimes' answer to it
            return Outcome.WALL_TIMEOUT, Failure(f"{exceeded} and was killed")
        # Not ended at the deadline, it exited by itself as the SIGTERM was on its way:
        # still a timeout, but its exit status says no signal ended it.
        return Outcome.WALL_TIMEOUT, Failure(
            f"{exceeded}: it had not ended then, and exited with code {child.exit_code} "
            "as it was being stopped"
        )
    if child.stop_reason:
        return Outcome.KILLED, Failure(child.stop_reason)
    if child.bridge_error:
        return Outcome.KILLED, Failure(
            f"the callback broke the bridge protocol: {child.bridge_error}"
        )
    if child.lost_reason:
        return Outcome.KILLED, Failure(child.lost_reason)
    if _hit_cpu_limit(child, limits):
        return Outcome.CPU_LIMIT, Failure(_cpu_limit_message(child, limits))
    if child.signal == signal.SIGSEGV and _ran_out_of_memory(child):
        # perl's "Out of memory!" and then its SIGSEGV, as plain perl ends under `ulimit
        # -v` (a deep recursion): the memory limit, which a TD can act on.
        return Outcome.MEMORY_LIMIT, Failure(
            f"the callback ran out of memory (limit {limits.memory_bytes} bytes) and then "
            f"was killed by {describe_signal(child.signal)}"
        )
    if child.signal:
        return Outcome.KILLED, Failure(
            f"the callback was killed by {describe_signal(child.signal)}"
        )
    if launch_failed(child):
        return Outcome.FAILED, Failure(
            f"the sandbox could not start the callback: {child.launch_failure}"
        )
    done = child.done
    if done is not None and child.exit_code == expected_exit(done):
        believed = _classify_done(done, child, limits)
        if believed is not None:
            return believed
    if _ran_out_of_memory(child) and child.exit_code:
        return Outcome.MEMORY_LIMIT, Failure(
            f"the callback ran out of memory (limit {limits.memory_bytes} bytes)"
        )
    if child.exit_code == 0:
        return Outcome.SUCCEEDED, None
    if child.exit_code == EXIT_REPORT_FAILED:
        return Outcome.FAILED, Failure(
            "the callback's end was not reported: an exception escaped the Python bootstrap "
            "after the run started (the traceback is on its stderr)"
        )
    message = f"the callback exited with status {child.exit_code}"
    if done is not None:
        message += f" (after reporting {done['status']!r}, which is not how it ended)"
    return Outcome.FAILED, Failure(message)


def _ran_out_of_memory(child: ChildExit) -> bool:
    """Whether the child said, as it ended unreported, that an allocation was refused."""
    return child.done is None and any(
        marker in child.stderr.tail(4096) for marker in _MEMORY_MARKERS
    )


def _cpu_limit_message(child: ChildExit, limits: Limits) -> str:
    """Why a CPU_LIMIT, in figures that agree with each other.

    The kernel stops a process when its CPU time as sampled at each clock tick reaches
    RLIMIT_CPU; the usage is its precise CPU time, which on a busy host can be a few
    percent less (a spinning process is charged whole ticks it shared with processes
    that ran briefly): measured with a bare process outside the executor, 1.85-1.92 s at
    a limit of 2 s. The callback's own start-up counts for ~2 ms (warm) to ~20 ms (cold).
    The limit quoted and compared is the enforced one (whole seconds); a limit asked for
    in fractions is named beside it, so "used 0.97s" never reads as over "0.1s".
    """
    used = child.cpu_seconds
    enforced = enforced_cpu_seconds(limits)
    asked = f"the {limits.cpu_seconds:g}s asked for, rounded up to whole seconds"
    rounded = limits.cpu_seconds != enforced
    if used >= enforced:
        detail = f"{asked}; used {used:.2f}s" if rounded else f"used {used:.2f}s"
        return f"the callback exceeded its CPU limit of {enforced}s ({detail})"
    limit = f"{enforced}s ({asked})" if rounded else f"{enforced}s"
    return (
        f"the callback reached its CPU limit of {limit} as the kernel counts CPU time "
        f"(RLIMIT_CPU, sampled at each clock tick); measured precisely, it used {used:.2f}s"
    )


def _classify_done(
    done: DoneFrame, child: ChildExit, limits: Limits
) -> tuple[Outcome, Failure | None] | None:
    """The outcome the child reported, when the kernel agrees; None to go by the exit status."""
    status = done["status"]
    if status == "ok":
        return Outcome.SUCCEEDED, None
    if status == "exit":
        code = done.get("exit_code", 0)
        if code == 0:
            return Outcome.SUCCEEDED, None
        if code != code & 0xFF:  # sys.exit(256): asked for, though the OS keeps 8 bits
            return Outcome.FAILED, Failure(
                f"the callback exited with status {code} (its process's exit status is "
                f"{code & 0xFF}: the OS keeps the low 8 bits)"
            )
        # sys.exit("reason"): the reason as Python printed it (cut to size by _bounded).
        reason = done.get("message", "")
        return Outcome.FAILED, Failure(
            f"the callback exited with status {code}: {reason}"
            if reason
            else f"the callback exited with status {code}"
        )
    if status == "terminated":
        # Not the executor's (its wall deadline and stops are classified before this).
        return Outcome.KILLED, Failure(
            "the callback was ended by a SIGTERM the executor did not send (another "
            "process's, or one the callback sent itself; its finally blocks and END "
            "blocks ran)"
        )
    exc = Failure(
        message=done.get("message", ""),
        exception_type=done.get("exception_type", ""),
        traceback=done.get("traceback", ""),
    )
    if status == "memory":
        return Outcome.MEMORY_LIMIT, Failure(
            f"the callback ran out of memory (limit {limits.memory_bytes} bytes)",
            exc.exception_type,
            exc.traceback,
        )
    if status == "rejected":
        if child.calls:
            return Outcome.FAILED, Failure(
                f"the callback reported it never ran, yet it made {child.calls} qb calls"
            )
        return Outcome.REJECTED, exc
    return Outcome.FAILED, exc
