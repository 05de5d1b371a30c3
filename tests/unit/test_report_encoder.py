"""A run's report never exceeds the supervisor's message limit, however much output it had."""

from __future__ import annotations

import dataclasses
import re

import pytest

from executor.api.reporting import ReportEncoder
from executor.model import (
    ActionRecord,
    CallbackSpec,
    Event,
    Failure,
    Invocation,
    Outcome,
    RunResult,
)
from supervisor_client.qbcallback.v1 import supervisor_pb2
from supervisor_client.qbcallback.v1.executor_pb2 import OUTCOME_SUCCEEDED
from tests.helpers.supervisor_port import invocation_for

pytestmark = pytest.mark.unit

LIMIT = 512 << 10
INVOCATION = invocation_for({"id": 7, "name": "comp"}, "print()", language="python")


def reported(stdout: str, stderr: str) -> supervisor_pb2.ReportResultRequest:
    result = RunResult(INVOCATION.invocation_id, Outcome.SUCCEEDED, stdout=stdout, stderr=stderr)
    payload = ReportEncoder(LIMIT)(INVOCATION, result, 1_700_000_000.25)
    assert len(payload) <= ReportEncoder(LIMIT).max_bytes
    request = supervisor_pb2.ReportResultRequest.FromString(payload)
    assert request.ended_at == 1_700_000_000.25, "whole or cut, the run's end is reported"
    return request


def test_output_within_the_limit_is_reported_whole() -> None:
    request = reported("out\n" * 1000, "err\n")

    assert request.result.stdout == "out\n" * 1000 and request.result.stderr == "err\n"
    assert not request.result.stdout_truncated and not request.result.stderr_truncated


@pytest.mark.parametrize("character", ["x", "é", "😀"])
def test_output_far_beyond_the_limit_is_cut_and_flagged(character: str) -> None:
    stdout = character * (8 << 20)
    request = reported(stdout, "short stderr\n")

    assert request.result.stdout_truncated and not request.result.stderr_truncated
    assert request.result.stderr == "short stderr\n"
    assert stdout.startswith(request.result.stdout)
    assert len(request.result.stdout.encode()) > LIMIT // 2  # the room is used, not wasted


def test_two_long_streams_share_the_room() -> None:
    request = reported("o" * (4 << 20), "e" * (4 << 20))

    assert request.result.stdout_truncated and request.result.stderr_truncated
    assert len(request.result.stdout) == pytest.approx(len(request.result.stderr), rel=0.01)


def test_a_cut_keeps_what_the_callback_flagged_and_never_splits_a_character() -> None:
    result = RunResult(
        INVOCATION.invocation_id,
        Outcome.SUCCEEDED,
        stdout="é" * LIMIT,
        stderr="",
        stderr_truncated=True,
    )
    request = supervisor_pb2.ReportResultRequest.FromString(
        ReportEncoder(LIMIT)(INVOCATION, result)
    )

    assert request.result.stdout_truncated and request.result.stderr_truncated
    assert set(request.result.stdout) == {"é"}


SMALLEST = 256 << 10  # the least supervisor_max_message_bytes takes


def encoded(invocation: Invocation, result: RunResult) -> supervisor_pb2.ReportResultRequest:
    encoder = ReportEncoder(SMALLEST)
    payload = encoder(invocation, result, 5.0)
    assert len(payload) <= encoder.max_bytes
    return supervisor_pb2.ReportResultRequest.FromString(payload)


def test_a_large_code_is_cut_and_the_output_kept_whole() -> None:
    # Probe 134 F2: a 400 KB code was never cut, and the supervisor refused the report.
    code = "# " + "c" * 400_000 + "\nprint('small')\n"
    big = invocation_for({"id": 7}, code, language="python")
    request = encoded(big, RunResult(big.invocation_id, Outcome.SUCCEEDED, stdout="small\n"))

    assert request.result.stdout == "small\n" and not request.result.stdout_truncated
    kept = request.callback.code
    assert kept.startswith("# ccc") and re.search(r"…\[\d+ more bytes\]$", kept)
    head = kept[: kept.rindex("…")]
    left_out = int(re.findall(r"\d+", kept[len(head) :])[0])
    assert len(head.encode()) + left_out == len(code.encode())
    assert len(kept.encode()) > SMALLEST // 2  # the room is used, not wasted


def test_every_field_at_its_largest_still_fits() -> None:
    four = "\U0001f600"  # 4 bytes of UTF-8
    name = four * 1024  # MAX_NAME_CHARS of the widest characters
    callback = CallbackSpec(
        language=name, code=four * (1 << 18), triggers="t" * (64 << 10), id=3, user=name
    )
    event = Event(name=name, type=name, job_id=7, extra=name, unresolved="")
    big = Invocation(
        invocation_id="i" * 1024,
        callback=callback,
        job={"id": 7},
        limits=INVOCATION.limits,
        event=event,
    )
    result = RunResult(
        big.invocation_id,
        Outcome.FAILED,
        stdout=four * (1 << 18),
        stderr="e" * (1 << 20),
        failure=Failure(four * 1024, four * 256, "frame\n" * 10_000 + "ValueError: cause\n"),
        actions=tuple(ActionRecord("v" * 64, name[:128], True, "m" * 1024) for _ in range(700)),
    )
    request = encoded(big, result)

    assert request.result.invocation_id == big.invocation_id
    assert request.result.failure.message == four * 1024, "the failure's message is kept whole"
    assert request.result.failure.traceback.endswith("ValueError: cause\n")
    assert request.event.extra == name and request.callback.user == name
    assert request.result.stdout_truncated and request.result.stderr_truncated
    assert request.result.actions[-1].verb == "…"  # says how many were left out
    assert re.search(r"…\[\d+ more bytes\]$", request.callback.code)  # little room, but said


def test_a_report_whose_essentials_are_too_large_is_cut_to_a_minimal_one() -> None:
    # Beyond what validation lets through (an event extra of 1 MB): still sent, and
    # each text it cut says how much of it was left out.
    event = Event(name="done", type="work", job_id=7, work_name="w" * (1 << 20))
    big = dataclasses.replace(INVOCATION, event=event)
    result = RunResult(big.invocation_id, Outcome.SUCCEEDED, stdout="small\n")
    request = encoded(big, result)

    assert request.result.invocation_id == big.invocation_id
    assert request.result.outcome == OUTCOME_SUCCEEDED
    assert re.search(r"…\[\d+ more bytes\]$", request.event.extra)
    assert request.result.stdout == "small\n"
