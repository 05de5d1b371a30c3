"""The dispatcher's one log line per run: a failed run says why, in its first line."""

from __future__ import annotations

import pytest

from executor.config import Settings
from executor.dispatcher import MAX_LOGGED_FAILURE_CHARS, run_log_fields
from executor.model import CallbackSpec, Failure, Invocation, Outcome, RunResult

pytestmark = pytest.mark.unit


def invocation(callback: CallbackSpec) -> Invocation:
    return Invocation("i", callback, {"id": 1}, Settings().default_limits)


def test_a_failed_run_logs_the_first_line_of_its_failure() -> None:
    ran = invocation(CallbackSpec("python", "x", id=3))
    failed = RunResult("i", Outcome.FAILED, failure=Failure("ValueError: bad range\nmore"))
    assert run_log_fields(ran, "python", failed)["failure"] == "ValueError: bad range"
    assert run_log_fields(ran, "python", RunResult("i", Outcome.SUCCEEDED))["failure"] == ""
    long = RunResult("i", Outcome.FAILED, failure=Failure("x" * 1000))
    assert len(run_log_fields(ran, "python", long)["failure"]) == MAX_LOGGED_FAILURE_CHARS


def test_a_universal_callback_is_named_by_its_file_in_the_log() -> None:
    assert CallbackSpec("qube", "x", id=3).name == "3"
    universal = CallbackSpec("qube", "x", id=3, source="/srv/cb/mail-status.qcb")
    assert universal.name == "mail-status.qcb"
    assert run_log_fields(invocation(universal), "qube", RunResult("i", Outcome.SUCCEEDED))[
        "callback"
    ] == ("mail-status.qcb")
