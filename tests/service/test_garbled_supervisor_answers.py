"""A supervisor whose answers do not parse: its error, said so, never the executor's.

Found by fault injection (probe 67): grpc.aio gives None, not an error, for an answer
that does not parse. The executor read it as a message: a qb call failed as "internal
error in the executor", the action it had sent was missing from the run's actions, and
a report's delivery failed "unexpectedly" for ever, never counted or set aside. A real
executor and outbox meet a real server on loopback that answers every call OK with
bytes that are not the response message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from executor import server
from executor.api.reporting import GrpcReportTransport
from executor.runs.outbox import Backoff, Outbox
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2
from tests.conftest import stack_settings
from tests.helpers.supervisors import GarbledAnswers
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service


@pytest.fixture
async def garbled() -> AsyncIterator[GarbledAnswers]:
    supervisor = GarbledAnswers()
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.stop()


def no_grpc_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """GRPC's own ERROR with a traceback per call is not logged: the executor says it once."""
    assert not [r for r in caplog.records if "Exception deserializing" in r.getMessage()]


async def test_a_qb_call_answered_with_garbage_is_the_supervisors_malformed_answer(
    tmp_path: Path, garbled: GarbledAnswers, caplog: pytest.LogCaptureFixture
) -> None:
    running = await server.start(
        stack_settings(
            tmp_path / "data", supervisor=garbled.address, supervisor_timeout_seconds=5.0
        )
    )
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            response = await client.execute_callback(
                language="python",
                code=(
                    "for call in (lambda: qb.jobstatus(7), lambda: qb.kill(7)):\n"
                    "    try:\n"
                    "        call()\n"
                    "    except qb.QbError as err:\n"
                    "        print(type(err).__name__, err)\n"
                ),
                job={"id": 7},
            )
    finally:
        await running.stop()
    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
    assert response.stdout.splitlines() == [
        "SupervisorUnavailable the supervisor's answer was malformed: "
        "its JobInfo answer does not parse",
        "SupervisorUnavailable the supervisor's answer was malformed: "
        "its JobAction answer does not parse; it may have been applied",
    ]
    # The kill was sent: listed, with what became of it.
    kills = [action for action in response.actions if action.verb == "kill"]
    assert [(a.target, a.ok) for a in kills] == [("7", False)]
    assert "may have been applied" in kills[0].message
    no_grpc_tracebacks(caplog)


def report() -> bytes:
    return supervisor_pb2.ReportResultRequest(
        result=executor_pb2.ExecuteResponse(
            invocation_id="run-1", outcome=executor_pb2.OUTCOME_SUCCEEDED
        ),
        job_id=1,
        ended_at=1.0,
    ).SerializeToString()


@pytest.mark.parametrize("results", [1, 3], ids=["alone", "batch"])
async def test_a_report_answered_with_garbage_is_counted_and_set_aside(
    tmp_path: Path, garbled: GarbledAnswers, results: int, caplog: pytest.LogCaptureFixture
) -> None:
    channel = grpc.aio.insecure_channel(garbled.address)
    outbox = Outbox(
        tmp_path / "outbox.db",
        GrpcReportTransport(channel, timeout_s=5.0),
        backoff=Backoff(first_s=0.01, cap_s=0.05),
        max_attempts=2,
        min_refusing_s=0.0,
    )
    try:
        for n in range(results):
            outbox.put(f"run-{n}", report())
        outbox.start()
        assert await eventually(lambda: outbox.dead() == results, timeout_s=20)
        letters = outbox.dead_letters()
        assert {letter.key for letter in letters} == {f"run-{n}" for n in range(results)}
        for letter in letters:
            assert "ReportResult answer does not parse" in letter.last_error, letter
        assert outbox.pending() == 0
        no_grpc_tracebacks(caplog)
    finally:
        await outbox.close()
        await channel.close()
