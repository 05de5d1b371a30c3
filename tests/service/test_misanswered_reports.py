"""A supervisor answering a few reports wrongly: retried, nothing set aside once it answers right.

Found by fault injection (probe 150): a ReportResults answer with too few or too many
acknowledgements, and the code OUT_OF_RANGE, set every result of the batch aside on the
first try. Only a refusal as invalid is final (README, *Reporting*); these are answered
failures like an answer that does not parse. A real outbox meets a real server on
loopback that answers its first calls so, then as the reference supervisor does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from executor.api.reporting import GrpcReportTransport
from executor.runs.outbox import Backoff, Outbox
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2
from tests.helpers.supervisors import BatchOnlySupervisor, SupervisorEndpoint
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

# The calls answered wrongly before the supervisor answers as it should.
WRONG_ANSWERS = 3
RESULTS = 3


class MisansweringSupervisor(BatchOnlySupervisor):
    """Answers its first ``WRONG_ANSWERS`` ReportResults calls as ``mode`` says.

    ``short``: an acknowledgement fewer than the results; ``extra``: three more;
    ``out_of_range``: the code OUT_OF_RANGE.
    """

    mode = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wrong = 0

    async def ReportResults(
        self, request: supervisor_pb2.ReportResultsRequest, context: Any
    ) -> supervisor_pb2.ReportResultsResponse:
        if self.wrong >= WRONG_ANSWERS:
            return await super().ReportResults(request, context)
        self.wrong += 1
        if self.mode == "out_of_range":
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "the proxy's quota is spent")
        entries = len(request.results) + (3 if self.mode == "extra" else -1)
        return supervisor_pb2.ReportResultsResponse(
            results=[supervisor_pb2.ReportResultResponse() for _ in range(entries)]
        )


@pytest.fixture(params=["short", "extra", "out_of_range"])
async def endpoint(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    servicer = type("Supervisor", (MisansweringSupervisor,), {"mode": request.param})
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", servicer)
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()
        endpoint.store.close()


def report(n: int) -> bytes:
    return supervisor_pb2.ReportResultRequest(
        result=executor_pb2.ExecuteResponse(
            invocation_id=f"run-{n}", outcome=executor_pb2.OUTCOME_SUCCEEDED
        ),
        job_id=1,
        ended_at=1.0,
    ).SerializeToString()


async def test_a_few_misanswered_reports_are_retried_and_nothing_is_set_aside(
    tmp_path: Path, endpoint: SupervisorEndpoint
) -> None:
    channel = grpc.aio.insecure_channel(endpoint.address)
    outbox = Outbox(
        tmp_path / "outbox.db",
        GrpcReportTransport(channel, timeout_s=5.0),
        backoff=Backoff(first_s=0.01, cap_s=0.05),
    )
    try:
        for n in range(RESULTS):
            outbox.put(f"run-{n}", report(n))
        outbox.start()
        assert await eventually(lambda: outbox.pending() == 0, timeout_s=20)
        assert outbox.dead() == 0, outbox.dead_letters()
        assert set(endpoint.servicer.applied) == {f"run-{n}" for n in range(RESULTS)}
    finally:
        await outbox.close()
        await channel.close()
