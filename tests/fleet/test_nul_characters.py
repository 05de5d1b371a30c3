"""A NUL in a stored string is refused alike on both stores, naming the field.

Probe 59: PostgreSQL's text cannot hold U+0000, so on a fleet these requests answered
INTERNAL (psycopg's UntranslatableCharacter) where a single SQLite executor took them.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from executor.api.triggers import TriggerServicer
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.helpers.servicer_context import Aborted, FakeContext, as_context
from tests.helpers.trigger_engines import MakeEngine, job

pytestmark = pytest.mark.service

NUL = "holds a NUL character (U+0000), which no stored text may hold"


async def refused(call: Any, request: Any) -> str:
    with pytest.raises(Aborted) as caught:
        await call(request, as_context(FakeContext()))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details
    return caught.value.details


async def test_a_nul_in_an_event_or_a_job_is_invalid_on_either_store(
    engines: MakeEngine,
) -> None:
    triggers = TriggerServicer(engines())
    context = as_context(FakeContext())
    await triggers.RegisterJob(
        executor_pb2.RegisterJobRequest(job=job_from_dict(job(5, ("complete-work-self-*", "x")))),
        context,
    )

    def work(work_name: str, event_id: str = "") -> executor_pb2.PublishEventRequest:
        return executor_pb2.PublishEventRequest(
            name="complete", type="work", job_id=5, work_name=work_name, event_id=event_id
        )

    assert await refused(triggers.PublishEvent, work("w\x00")) == f"work_name {NUL}"
    assert await refused(triggers.PublishEvent, work("w", "e\x00")) == f"event_id {NUL}"
    host = executor_pb2.DryRunRequest(name="complete", type="host", job_id=5, host="h\x00")
    assert await refused(triggers.DryRun, host) == f"host {NUL}"
    batch = executor_pb2.PublishEventsRequest(events=[work("ok", "nul-1"), work("w\x00")])
    assert await refused(triggers.PublishEvents, batch) == f"events[1]: work_name {NUL}"
    # All or none: the good event of the refused batch was not applied.
    assert not (await triggers.PublishEvent(work("ok", "nul-1"), context)).duplicate

    bad_jobs: list[tuple[dict[str, Any], str]] = [
        ({"user": "al\x00ice"}, "job.user"),
        ({"agenda": [{"name": "w\x00"}]}, "job.agenda[0].name"),
    ]
    for fields, field in bad_jobs:
        request = executor_pb2.RegisterJobRequest(job=job_from_dict({**job(6), **fields}))
        assert await refused(triggers.RegisterJob, request) == f"{field} {NUL}"
    python = job(7, ("complete-job-self", "print('\x00')"))
    python["callbacks"][0]["language"] = "python"
    request = executor_pb2.RegisterJobRequest(job=job_from_dict(python))
    assert await refused(triggers.RegisterJob, request) == f"job.callbacks[0].code {NUL}"
