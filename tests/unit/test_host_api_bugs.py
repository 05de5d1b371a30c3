"""A qb call an executor bug ends is answered, and listed in the run's actions all the same.

Found by probe 89: such a call (a NaN in a supervisor's answer was one) was answered
"internal error in the executor" but missing from ``ExecuteResponse.actions``, "the qb
calls made, in order": only a refusal (HostCallError) or a cut-short call was recorded.
The fault is injected into the port's action, over the real reference supervisor.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from executor.host_api import INTERNAL_ERROR, HostApi
from executor.model import ActionRecord
from executor.supervisor_link import ActionOutcome
from supervisor_client.reference import ReferenceSupervisor
from tests.helpers.clock import Clock
from tests.helpers.supervisor_port import ReferencePort, invocation_for

pytestmark = pytest.mark.unit


class BuggyPort(ReferencePort):
    """The reference port, with a bug in its job actions."""

    async def job_action(
        self, verb: str, job_id: int, *, actor: str, invocation_id: str, action_seq: int
    ) -> ActionOutcome:
        raise RuntimeError("a bug in the executor")


@pytest.fixture
def sup() -> Iterator[ReferenceSupervisor]:
    with ReferenceSupervisor(":memory:", clock=Clock()) as supervisor:
        yield supervisor


async def test_a_call_an_executor_bug_ends_is_answered_and_listed(
    sup: ReferenceSupervisor, caplog: pytest.LogCaptureFixture
) -> None:
    (job,) = sup.submit([{"name": "j", "user": "alice"}])
    host = HostApi(BuggyPort(sup), invocation_for(job, "", language="python"))
    status = await host.serve_frame(
        {"type": "call", "id": 1, "fn": "jobstatus", "args": [job["id"]], "kwargs": {}}
    )
    reply = await host.serve_frame(
        {"type": "call", "id": 2, "fn": "block", "args": [job["id"]], "kwargs": {}}
    )
    assert status["ok"]
    assert reply == {
        "type": "reply",
        "id": 2,
        "ok": False,
        "error": {"kind": "QbError", "message": INTERNAL_ERROR},
    }
    assert host.actions == [
        ActionRecord("jobstatus", str(job["id"]), True, "pending"),
        ActionRecord("block", str(job["id"]), False, f"QbError: {INTERNAL_ERROR}"),
    ]
    # The bug's traceback is the log's, once.
    (logged,) = [r for r in caplog.records if r.exc_info]
    assert logged.getMessage() == "qb.block failed inside the executor"
