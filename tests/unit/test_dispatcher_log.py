"""The dispatcher's one log line per run: a failed run says why, in its first line."""

from __future__ import annotations

import pytest

from executor.dispatcher import MAX_LOGGED_FAILURE_CHARS, failure_note
from executor.model import CallbackSpec, Failure, Outcome, RunResult

pytestmark = pytest.mark.unit


def test_a_failed_run_logs_the_first_line_of_its_failure() -> None:
    failed = RunResult(
        "i", Outcome.FAILED, failure=Failure("ValueError: bad frame range\nmore detail")
    )
    assert failure_note(failed) == ' failure="ValueError: bad frame range"'
    assert failure_note(RunResult("i", Outcome.SUCCEEDED)) == ""
    long = RunResult("i", Outcome.FAILED, failure=Failure("x" * 1000))
    assert len(failure_note(long)) == len(' failure=""...') + MAX_LOGGED_FAILURE_CHARS


def test_a_universal_callback_is_named_by_its_file_in_the_log() -> None:
    assert CallbackSpec("qube", "x", id=3).name == "3"
    assert CallbackSpec("qube", "x", id=3, source="/srv/cb/mail-status.qcb").name == (
        "mail-status.qcb"
    )
