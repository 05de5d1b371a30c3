r"""Text a callback makes that is not valid UTF-8 reaches its result, its history and its supervisor.

A lone surrogate (``'\ud800'`` in Python) cannot be encoded as UTF-8: the executor
makes it U+FFFD where it takes the child's frames, as it does invalid bytes in output,
so the run is answered, recorded and reported like any other.
"""

from __future__ import annotations

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack
from tests.helpers.waiting import eventually, outbox_drained

pytestmark = pytest.mark.service

Outcome = executor_pb2.Outcome


async def assert_recorded_and_reported(stack: Stack, invocation_id: str) -> executor_pb2.Run:
    assert await eventually(lambda: stack.supervisor.result(invocation_id) is not None)
    assert await outbox_drained(stack.client)
    return await stack.client.get_run(invocation_id)


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("python", "raise ValueError('bad \\ud800 text')", "bad \ufffd text"),
        ("python", "qb.jobinfo('-id', '\\ud800')", "\ufffd"),
        # Perl's own strings may hold surrogates and code points beyond U+10FFFF.
        ("perl", 'die "bad " . chr(0xD800) . " text\\n";', "bad \ufffd text"),
        ("perl", 'die "beyond " . chr(0x110000) . "\\n";', "beyond \ufffd"),
        ("perl", 'qb::workunblock("1:" . chr(0xD800));', "\ufffd"),
    ],
)
async def test_text_without_utf8_from_a_callback_is_a_failed_run_recorded(
    stack_warm: Stack, language: str, code: str, expected: str
) -> None:
    response = await stack_warm.client.execute_callback(
        language=language, code=code, job={"id": 1, "user": "root"}
    )

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert expected in response.failure.message + "".join(
        str(action) for action in response.actions
    )
    run = await assert_recorded_and_reported(stack_warm, response.invocation_id)
    assert run.result.failure.message == response.failure.message


@pytest.mark.parametrize(
    ("job_id", "language", "code"),
    [
        (61, "python", "raise ValueError('bad \\ud800')"),
        (62, "perl", 'die "bad " . chr(0xD800) . "\\n";'),
    ],
)
async def test_a_fired_callback_with_a_lone_surrogate_is_run_recorded_and_reported(
    stack_warm: Stack, job_id: int, language: str, code: str
) -> None:
    client = stack_warm.client
    await client.register_job(
        {
            "id": job_id,
            "name": "surrogate",
            "user": "root",
            "callbacks": [{"triggers": "complete-job-self", "language": language, "code": code}],
        }
    )

    reply = await client.publish_event(name="complete", type="job", job_id=job_id, wait=True)

    (fired,) = reply.fired
    assert fired.result.outcome == Outcome.OUTCOME_FAILED, fired
    assert "bad \ufffd" in fired.result.failure.message
    run = await assert_recorded_and_reported(stack_warm, fired.invocation_id)
    assert "bad \ufffd" in run.result.failure.message
