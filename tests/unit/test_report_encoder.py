"""A run's report never exceeds the supervisor's message limit, however much output it had."""

from __future__ import annotations

import pytest

from executor.api.reporting import ReportEncoder
from executor.model import Outcome, RunResult
from supervisor_client.qbcallback.v1 import supervisor_pb2
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
