"""Hostile requests: code and trigger strings of megabytes, parentheses nested 100k deep.

Refused with INVALID_ARGUMENT and a message naming the limit (no parse of the whole
input, no RecursionError), and nothing is started or registered.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from executor.bounds import MAX_CODE_BYTES
from executor.triggers.lexer import MAX_DEPTH, MAX_TRIGGER_BYTES
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from supervisor_client.reference import submission
from supervisor_client.reference.errors import SubmitError
from tests.conftest import Stack
from tests.hostile.harness import MIB

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(60)]


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    """Await a raw stub call (typed as sync by the generated stubs) that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def _nothing_ran(stack: Stack) -> bool:
    return not (await stack.client.get_metrics()).runs_by_outcome


def _execute(stack: Stack, code: str, triggers: str = "") -> executor_pb2.ExecuteRequest:
    (job,) = stack.supervisor.submit([{"name": "big", "user": "mallory"}])
    return executor_pb2.ExecuteRequest(
        invocation_id="hostile-big",
        callback=types_pb2.Callback(language="python", code=code, triggers=triggers),
        context=executor_pb2.JobContext(job=job_from_dict(job)),
    )


async def test_code_over_the_code_limit_is_invalid_argument(stack_warm: Stack) -> None:
    code = "x = 1\n" * (2 * MIB // 6)
    error = await _refused(stack_warm.stub.Execute(_execute(stack_warm, code)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"the limit is {MAX_CODE_BYTES}" in (error.details() or "")
    assert await _nothing_ran(stack_warm)


async def test_code_of_5_mb_is_invalid_argument_with_a_clear_message(stack_warm: Stack) -> None:
    code = "# " + "x" * (5 * MIB) + "\n"
    error = await _refused(stack_warm.stub.Execute(_execute(stack_warm, code)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert "callback.code" in (error.details() or "")
    assert await _nothing_ran(stack_warm)


async def test_execute_with_a_trigger_of_megabytes_is_invalid_argument(stack_warm: Stack) -> None:
    triggers = "complete-job-self || " * (3 * MIB // 21) + "complete-job-self"
    error = await _refused(stack_warm.stub.Execute(_execute(stack_warm, "print(1)", triggers)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "callback.triggers" in (error.details() or "")
    assert await _nothing_ran(stack_warm)


def _register(
    stack: Stack, triggers: str, code: str = "print(1)"
) -> executor_pb2.RegisterJobRequest:
    (job,) = stack.supervisor.submit([{"name": "registered", "user": "mallory"}])
    job["callbacks"] = [{"triggers": triggers, "language": "python", "code": code}]
    return executor_pb2.RegisterJobRequest(job=job_from_dict(job))


async def test_code_over_the_limit_is_refused_at_registration_as_at_execute(
    stack_warm: Stack,
) -> None:
    # Before, RegisterJob (and the farm's SubmitJobs) stored 3 MiB that Execute refuses.
    code = "#" + "x" * (3 * MIB) + "\nprint(1)"
    request = _register(stack_warm, "complete-job-self", code)
    error = await _refused(stack_warm.triggers.RegisterJob(request))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == (
        f"job.callbacks[0].code is {len(code)} bytes; the limit is {MAX_CODE_BYTES} (1 MiB)"
    )
    with pytest.raises(SubmitError, match=r"callback 1: code is \d+ bytes; the limit is"):
        stack_warm.supervisor.submit(
            [
                {
                    "name": "big",
                    "callbacks": [
                        {"triggers": "done-job-self", "language": "python", "code": code}
                    ],
                }
            ]
        )
    at_the_limit = "#" * MAX_CODE_BYTES
    await stack_warm.client.register_job(_register(stack_warm, "complete-job-self", at_the_limit))


def test_the_farm_and_the_executor_share_the_code_limit() -> None:
    assert submission.MAX_CODE_BYTES == MAX_CODE_BYTES


@pytest.mark.parametrize(
    ("triggers", "message"),
    [
        pytest.param(
            "complete-job-self && " * (3 * MIB // 21) + "complete-job-self",
            f"at most {MAX_TRIGGER_BYTES} bytes",
            id="3MB-trigger",
        ),
        pytest.param(
            "(" * 100_000 + "complete-job-self" + ")" * 100_000,
            f"at most {MAX_TRIGGER_BYTES} bytes",
            id="100k-nested-parentheses",
        ),
        # Under the size limit, so the depth guard answers.
        pytest.param(
            "(" * 32_000 + "complete-job-self" + ")" * 32_000,
            f"at most {MAX_DEPTH} levels of parentheses",
            id="32k-nested-within-size",
        ),
        pytest.param(
            "(" * 32_000 + "complete-job-self",
            f"at most {MAX_DEPTH} levels of parentheses",
            id="32k-unclosed",
        ),
        # One 60 KB word: refused as an unknown event name.
        pytest.param(
            "x" * 60_000 + "-job-self",
            "unknown event name",
            id="60k-atom",
        ),
    ],
)
async def test_register_job_refuses_hostile_triggers_fast(
    stack_warm: Stack, triggers: str, message: str
) -> None:
    error = await _refused(stack_warm.triggers.RegisterJob(_register(stack_warm, triggers)))

    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), details[:300])
    assert message in details, details[:300]
    assert "RecursionError" not in details and "recursion" not in details.lower()
    assert len(details) < 1000, "the refusal echoes the whole input"
    # The service is fine: a sane registration right after works.
    await stack_warm.client.register_job(_register(stack_warm, "complete-job-self"))
