"""Classifying how a child ended: deadline or stop > the kernel's evidence > done frame > exit."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
from pathlib import Path
from typing import Any, cast

import pytest

from executor.child.protocol import DoneFrame
from executor.model import Limits, Outcome
from executor.sandbox.capture import CapturedStream
from executor.sandbox.exit_status import (
    EXIT_LAUNCH_FAILED,
    EXIT_REPORT_FAILED,
    ChildExit,
    classify,
    describe_signal,
    sandbox_result,
)

pytestmark = pytest.mark.unit

LIMITS = Limits(
    cpu_seconds=2,
    wall_seconds=5,
    memory_bytes=1 << 28,
    output_bytes=1024,
    max_processes=8,
    disk_bytes=1 << 20,
)


def exited(code: int) -> int:
    return code << 8


def killed(signum: int) -> int:
    return signum


def child(status: int = 0, done: dict[str, Any] | None = None, **fields: Any) -> ChildExit:
    frame = cast("DoneFrame | None", done)  # the cases build frames by hand, some odd on purpose
    return ChildExit(wait_status=status, done=frame, stderr=CapturedStream(4096), **fields)


@pytest.mark.parametrize(
    ("exit_", "outcome"),
    [
        (child(exited(0), {"status": "ok"}), Outcome.SUCCEEDED),
        (child(exited(0)), Outcome.SUCCEEDED),
        (child(exited(0), {"status": "exit", "exit_code": 0}), Outcome.SUCCEEDED),
        (child(exited(3), {"status": "exit", "exit_code": 3}), Outcome.FAILED),
        (child(exited(1), {"status": "exception", "message": "x"}), Outcome.FAILED),
        (child(exited(1), {"status": "memory"}), Outcome.MEMORY_LIMIT),
        (child(exited(2), {"status": "rejected", "message": "no"}), Outcome.REJECTED),
        (child(killed(signal.SIGXCPU)), Outcome.CPU_LIMIT),
        (child(exited(152), cpu_seconds=1.7), Outcome.CPU_LIMIT),
        (child(exited(152), {"status": "exit", "exit_code": 152}), Outcome.FAILED),
        (child(exited(152)), Outcome.FAILED),  # no CPU time to show for a CPU limit
        # The kernel's word beats the child's: a done frame the exit does not bear out.
        (child(exited(152), {"status": "ok"}, cpu_seconds=2.0), Outcome.CPU_LIMIT),
        (child(killed(signal.SIGSEGV), {"status": "ok"}), Outcome.KILLED),
        (child(exited(3), {"status": "ok"}), Outcome.FAILED),
        (child(exited(0), {"status": "exception", "message": "forged"}), Outcome.SUCCEEDED),
        (child(exited(2), {"status": "rejected"}, calls=1), Outcome.FAILED),
        # SIGTERM from outside: the runtime's clean exit 143 says so, and only with 143.
        (child(exited(143), {"status": "terminated"}), Outcome.KILLED),
        (child(exited(0), {"status": "terminated"}), Outcome.SUCCEEDED),
        (child(exited(143), {"status": "exit", "exit_code": 143}), Outcome.FAILED),
        (child(exited(143), {"status": "terminated"}, timed_out=True), Outcome.WALL_TIMEOUT),
        (child(exited(0), {"status": "ok"}, bridge_error="bad"), Outcome.KILLED),
        (child(killed(signal.SIGKILL), cpu_seconds=3.0), Outcome.CPU_LIMIT),
        (child(killed(signal.SIGKILL), cpu_seconds=0.1), Outcome.KILLED),
        (child(killed(signal.SIGSEGV)), Outcome.KILLED),
        (child(exited(7)), Outcome.FAILED),
        # The memory cgroup's OOM killer: a failure after a kill is a memory failure.
        (child(killed(signal.SIGKILL), oom_kills=1), Outcome.MEMORY_LIMIT),
        (
            child(exited(1), {"status": "exception", "message": "x"}, oom_kills=2),
            Outcome.MEMORY_LIMIT,
        ),
        (child(exited(0), {"status": "ok"}, oom_kills=1), Outcome.SUCCEEDED),
        (child(killed(signal.SIGXCPU), oom_kills=1), Outcome.CPU_LIMIT),
        (child(killed(signal.SIGKILL), {"status": "ok"}, timed_out=True), Outcome.WALL_TIMEOUT),
        # A stop: whatever the child then did, and even after an OOM kill.
        (child(exited(143), {"status": "exit", "exit_code": 143}, stop_reason="x"), Outcome.KILLED),
        (child(exited(0), {"status": "ok"}, stop_reason="x"), Outcome.KILLED),
        (child(killed(signal.SIGKILL), stop_reason="x", oom_kills=1), Outcome.KILLED),
    ],
)
def test_classification(exit_: ChildExit, outcome: Outcome) -> None:
    assert classify(exit_, LIMITS)[0] == outcome


@pytest.mark.parametrize(
    ("exit_", "outcome"),
    [
        # Its own 0.1 s: a SIGKILL from elsewhere, however long unreaped processes spun.
        (child(killed(signal.SIGKILL), cpu_seconds=0.1, cell_cpu_seconds=3.0), Outcome.KILLED),
        (child(exited(152), cpu_seconds=0.1, cell_cpu_seconds=3.0), Outcome.FAILED),
        (child(killed(signal.SIGKILL), cpu_seconds=3.0, cell_cpu_seconds=3.1), Outcome.CPU_LIMIT),
    ],
)
def test_the_cpu_limit_is_judged_on_the_main_process_not_its_cell(
    exit_: ChildExit, outcome: Outcome
) -> None:
    assert classify(exit_, LIMITS)[0] == outcome


@pytest.mark.parametrize(
    ("main", "cell", "reported"),
    [
        (0.004, 2.9, 2.9),  # a forked process nobody reaped spun to the wall limit
        (0.02, 0.001, 0.02),  # a prepared child's start-up, before the cell's count began
        (0.5, None, 0.5),  # no counter: the main process's figure, as before
    ],
)
def test_the_usage_reports_the_larger_of_main_and_cell_cpu(
    main: float, cell: float | None, reported: float
) -> None:
    result = sandbox_result(
        child(killed(signal.SIGKILL), cpu_seconds=main, cell_cpu_seconds=cell, timed_out=True),
        LIMITS,
    )

    assert result.outcome == Outcome.WALL_TIMEOUT
    assert result.usage.cpu_seconds == reported


def test_perl_out_of_memory_on_stderr_is_memory_limit() -> None:
    exit_ = child(exited(1))
    exit_.stderr.feed(b"Out of memory!\n")
    outcome, failure = classify(exit_, LIMITS)
    assert outcome == Outcome.MEMORY_LIMIT
    assert failure is not None and "268435456" in failure.message


NEVER_RAN = (
    "the callback never ran: its memory limit of 268435456 bytes is less than its process "
    "needs to start"
)


@pytest.mark.parametrize(
    ("exit_", "message"),
    [
        # The kernel's OOM kill before the start frame was read: the code never ran.
        (child(killed(signal.SIGKILL), oom_kills=1, start_unread=True), NEVER_RAN),
        # The SIGSEGV of an exec (or a stack) RLIMIT_AS left no room for, as early.
        (child(killed(signal.SIGSEGV), start_unread=True), NEVER_RAN),
        # Once its code was read, an OOM kill is the run's processes exceeding the limit.
        (
            child(killed(signal.SIGKILL), oom_kills=1),
            "the callback's processes together exceeded the memory limit of 268435456 bytes:"
            " the kernel killed 1 of them",
        ),
        # A child OOM-killed, then the main process's own crash: both said (probe 135).
        (
            child(killed(signal.SIGSEGV), oom_kills=1),
            "the callback's processes together exceeded the memory limit of 268435456 bytes:"
            " the kernel killed 1 of them, and then the callback was killed by signal 11"
            " (SIGSEGV)",
        ),
    ],
    ids=["oom-kill-before-start", "segv-before-start", "oom-kill-after-start", "oom-then-segv"],
)
def test_a_process_that_could_not_start_within_its_memory_limit_never_ran(
    exit_: ChildExit, message: str
) -> None:
    outcome, failure = classify(exit_, LIMITS)
    assert outcome == Outcome.MEMORY_LIMIT
    assert failure is not None and failure.message == message


def test_a_segv_after_the_start_is_the_callbacks_own() -> None:
    outcome, failure = classify(child(killed(signal.SIGSEGV)), LIMITS)
    assert outcome == Outcome.KILLED
    assert failure is not None and "SIGSEGV" in failure.message


def test_out_of_memory_is_read_from_the_end_of_a_long_invalid_stderr() -> None:
    exit_ = child(exited(1))
    # Within the cap as bytes, but each bad byte is three as text: the text is cut
    # before the end, where the runtime's last words are.
    exit_.stderr = CapturedStream(4 << 20)
    exit_.stderr.feed(b"\xff" * (2 << 20) + b"Out of memory!\n")
    assert classify(exit_, LIMITS)[0] == Outcome.MEMORY_LIMIT


def test_a_stopped_run_reports_the_reason_of_its_stop() -> None:
    stopped = child(killed(signal.SIGTERM), stop_reason="the executor is shutting down")

    result = sandbox_result(stopped, LIMITS)

    assert result.outcome == Outcome.KILLED
    assert result.failure is not None
    assert result.failure.message == "the executor is shutting down"
    assert result.signal == signal.SIGTERM


def test_the_result_carries_output_exit_status_and_usage() -> None:
    exit_ = child(exited(3), cpu_seconds=0.25, peak_rss_bytes=4096, wall_seconds=1.5)
    exit_.stderr.feed(b"oops\n")

    result = sandbox_result(exit_, LIMITS)

    assert (result.outcome, result.exit_code, result.signal) == (Outcome.FAILED, 3, 0)
    assert (result.stdout, result.stderr, result.stderr_truncated) == ("", "oops\n", False)
    assert (result.usage.wall_seconds, result.usage.cpu_seconds) == (1.5, 0.25)
    assert (result.usage.peak_rss_bytes, result.usage.queue_seconds) == (4096, 0.0)


def test_signal_description() -> None:
    assert describe_signal(11) == "signal 11 (SIGSEGV)"
    assert os.WTERMSIG(killed(9)) == 9


def test_an_exit_beyond_255_fails_saying_what_the_os_kept() -> None:
    outcome, failure = classify(child(exited(0), {"status": "exit", "exit_code": 256}), LIMITS)
    assert outcome is Outcome.FAILED and failure is not None
    assert failure.message == (
        "the callback exited with status 256 (its process's exit status is 0: "
        "the OS keeps the low 8 bits)"
    )


def test_a_report_that_failed_after_the_start_is_no_launch_failure() -> None:
    # The Python bootstrap's exit when an exception escaped it once the run had started.
    outcome, failure = classify(child(exited(122)), LIMITS)

    assert outcome == Outcome.FAILED
    assert failure is not None
    assert failure.message.startswith("the callback's end was not reported")


def test_a_launch_failure_is_believed_only_when_said_and_the_start_frame_went_unread() -> None:
    said = child(exited(121))
    said.launch_failure = "OSError: unshare: Operation not permitted"
    said.start_unread = True
    launch = classify(said, LIMITS)

    assert launch[0] == Outcome.FAILED
    assert launch[1] is not None
    assert launch[1].message == (
        "the sandbox could not start the callback: OSError: unshare: Operation not permitted"
    )
    # Said by a callback that read its start frame; not said; an exit 121 alone.
    read = dataclasses.replace(said, start_unread=False)
    unsaid = dataclasses.replace(said, launch_failure="")
    for evidence in (read, unsaid, child(exited(121))):
        failure = classify(evidence, LIMITS)[1]
        assert failure is not None
        assert failure.message == "the callback exited with status 121"


def test_the_child_spells_its_failure_exits_as_the_classifier_does() -> None:
    child_dir = Path(__file__).parents[2] / "executor" / "child"
    launcher = (child_dir / "launcher.py").read_text()
    bootstrap = (child_dir / "python_bootstrap.py").read_text()

    assert re.search(rf"^EXIT_LAUNCH_FAILED = {EXIT_LAUNCH_FAILED}$", launcher, re.MULTILINE)
    assert re.search(rf"^EXIT_REPORT_FAILED = {EXIT_REPORT_FAILED}$", bootstrap, re.MULTILINE)


def test_a_sigterm_the_executor_did_not_send_says_so() -> None:
    # It may be the callback's own (os.kill(os.getpid(), SIGTERM)): no "from outside".
    outcome, failure = classify(child(exited(143), {"status": "terminated"}), LIMITS)

    assert outcome == Outcome.KILLED
    assert failure is not None
    assert failure.message.startswith(
        "the callback was ended by a SIGTERM the executor did not send (another process's, "
        "or one the callback sent itself;"
    )


@pytest.mark.parametrize(
    ("cpu_seconds", "message"),
    [
        # Stopped by the kernel's tick-sampled count before the precise figure got there.
        (
            1.91,
            "the callback reached its CPU limit of 2s as the kernel counts CPU time "
            "(RLIMIT_CPU, sampled at each clock tick); measured precisely, it used 1.91s",
        ),
        (2.0, "the callback exceeded its CPU limit of 2s (used 2.00s)"),
        (2.97, "the callback exceeded its CPU limit of 2s (used 2.97s)"),  # the hard limit
    ],
)
def test_a_cpu_limit_message_never_contradicts_its_figures(
    cpu_seconds: float, message: str
) -> None:
    outcome, failure = classify(child(killed(signal.SIGXCPU), cpu_seconds=cpu_seconds), LIMITS)

    assert outcome == Outcome.CPU_LIMIT
    assert failure is not None
    assert failure.message == message


@pytest.mark.parametrize(
    ("asked", "used", "message"),
    [
        # RLIMIT_CPU takes whole seconds: 0.1 s is enforced as 1 s, 1.5 s as 2 s.
        (
            0.1,
            0.97,
            "the callback reached its CPU limit of 1s (the 0.1s asked for, rounded up to "
            "whole seconds) as the kernel counts CPU time (RLIMIT_CPU, sampled at each clock "
            "tick); measured precisely, it used 0.97s",
        ),
        (
            1.5,
            1.91,
            "the callback reached its CPU limit of 2s (the 1.5s asked for, rounded up to "
            "whole seconds) as the kernel counts CPU time (RLIMIT_CPU, sampled at each clock "
            "tick); measured precisely, it used 1.91s",
        ),
        (
            1.5,
            2.04,
            "the callback exceeded its CPU limit of 2s (the 1.5s asked for, rounded up to "
            "whole seconds; used 2.04s)",
        ),
    ],
)
def test_a_cpu_limit_message_quotes_the_limit_the_kernel_enforced(
    asked: float, used: float, message: str
) -> None:
    limits = dataclasses.replace(LIMITS, cpu_seconds=asked)

    outcome, failure = classify(child(killed(signal.SIGXCPU), cpu_seconds=used), limits)

    assert outcome == Outcome.CPU_LIMIT
    assert failure is not None
    assert failure.message == message


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (killed(signal.SIGKILL), "the callback exceeded its wall-clock limit of 5s and was killed"),
        # The runtimes' answer to the executor's SIGTERM (their finally and END blocks ran).
        (exited(143), "the callback exceeded its wall-clock limit of 5s and was killed"),
        # It ended by itself as the SIGTERM was on its way (a limit of 0.002 s, probe 119):
        # "was killed" beside "exit: code 0" said two things.
        (
            exited(0),
            "the callback exceeded its wall-clock limit of 5s: it had not ended then, and "
            "exited with code 0 as it was being stopped",
        ),
    ],
)
def test_a_wall_timeout_message_never_contradicts_the_exit_status(status: int, said: str) -> None:
    outcome, failure = classify(child(status, timed_out=True), LIMITS)

    assert outcome == Outcome.WALL_TIMEOUT
    assert failure is not None and failure.message == said
