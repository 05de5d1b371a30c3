"""What a callback is told when the supervisor refuses or fails a qb call."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from executor.api.supervisor import MAX_SUPERVISOR_ANSWER_BYTES, host_error

pytestmark = pytest.mark.unit


def rpc_error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details)


@pytest.mark.parametrize(
    ("code", "details", "ran_out_of_s", "said"),
    [
        (grpc.StatusCode.UNAVAILABLE, "connection refused", None, "the supervisor is unavailable"),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            10.0,
            "the supervisor did not answer within 10 s",
        ),
        # Sooner than the deadline: the supervisor answered it.
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "its own deadline",
            None,
            "the supervisor answered with an error",
        ),
        (grpc.StatusCode.CANCELLED, "cut", None, "the call to the supervisor was cancelled"),
        # Before, these two read "did not answer" although the supervisor had answered.
        (grpc.StatusCode.INTERNAL, "boom", None, "the supervisor answered with an error"),
    ],
)
def test_the_message_says_whether_the_supervisor_answered(
    code: grpc.StatusCode, details: str, ran_out_of_s: float | None, said: str
) -> None:
    error = host_error(rpc_error(code, details), ran_out_of_s=ran_out_of_s)
    assert error.kind == "SupervisorUnavailable"
    assert error.message == f"{said}: {code.name}: {details}"


@pytest.mark.parametrize(
    ("code", "may_have_been_applied"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.CANCELLED, True),
        # Any other code is the supervisor's answer, not a call cut off from one.
        (grpc.StatusCode.INTERNAL, False),
        (grpc.StatusCode.NOT_FOUND, False),
    ],
)
def test_an_action_cut_off_from_its_answer_may_have_been_applied(
    code: grpc.StatusCode, may_have_been_applied: bool
) -> None:
    error = host_error(rpc_error(code, "details"), acts=True)
    assert error.message.endswith("; it may have been applied") is may_have_been_applied
    # A read changes nothing, so its message has nothing to add.
    assert not host_error(rpc_error(code, "details")).message.endswith("applied")


def test_an_answer_too_large_is_an_error_of_the_call_not_the_supervisor_away() -> None:
    details = "Received message larger than max (70000000 vs. 67108864)"
    error = host_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, details))
    assert error.kind == "QbError"  # the same call would fail again: not one to retry
    assert error.message == (
        "the supervisor's answer is larger than the executor takes "
        f"({MAX_SUPERVISOR_ANSWER_BYTES} bytes): {details}"
    )
