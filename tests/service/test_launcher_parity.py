"""The warm (zygote) and the cold (fork+exec) launcher give a callback the same.

A policy with binds, a group or a umask starts its children cold, so a callback must
not behave differently there: its exit status as its language decides it (Perl's ``$?``
after its ``END`` blocks).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
]

Outcome = executor_pb2.Outcome


async def run(
    stack: Stack, language: str, code: str, **limits: Any
) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "parity", "user": "alice", "status": "blocked"}])
    return await stack.client.execute_callback(
        language=language, code=code, job=job, limits=limits or None
    )


# -- exit status --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome", "exit_code"),
    [
        ('print "ran\\n";\nEND { $? = 3 }', Outcome.OUTCOME_FAILED, 3),
        ('print "ran\\n";\ndie "x\\n";\nEND { $? = 0 }', Outcome.OUTCOME_SUCCEEDED, 0),
        ('print "ran\\n";\nexit 0;\nEND { $? = 4 }', Outcome.OUTCOME_FAILED, 4),
    ],
    ids=["end-sets-3", "die-then-end-sets-0", "exit-0-then-end-sets-4"],
)
async def test_a_perl_callbacks_exit_status_is_what_its_end_blocks_leave_in_status(
    stack: Stack, code: str, outcome: int, exit_code: int
) -> None:
    # As plain perl: `perl -e 'END { $? = 3 }'` exits 3. The warm path answered at its
    # end mark with the status the done frame implied (SUCCEEDED, and FAILED after die).
    for _ in range(3):  # prepared children too
        response = await run(stack, "perl", code)

        assert (response.outcome, response.exit_code) == (outcome, exit_code), (
            response.failure.message
        )
        assert response.stdout == "ran\n"
