"""What RegisterJob, PublishEvent and the FarmService refuse in a request's values, by name.

Numbers JSON cannot hold inside a Struct (INTERNAL, or protobuf's own words, before),
negative instance numbers, and names beyond ``bounds.MAX_NAME_CHARS`` (a 1 MB work name
or event id was stored and journaled before).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from executor.api.farm import FarmServicer
from executor.api.triggers import TriggerServicer
from executor.bounds import MAX_NAME_CHARS, MAX_REQUEST_BYTES
from supervisor_client.jobdict import dict_to_struct
from supervisor_client.qbcallback.v1 import executor_pb2, farm_pb2, supervisor_pb2, types_pb2
from supervisor_client.reference import ReferenceSupervisor, forwarder, submission
from supervisor_client.reference.farm import Farm
from tests.helpers.servicer_context import Aborted, FakeContext, as_context
from tests.helpers.trigger_engines import Engines, Recorder, no_labels

pytestmark = pytest.mark.unit

LONG = "x" * (MAX_NAME_CHARS + 1)


def context() -> grpc.aio.ServicerContext[Any, Any]:
    return as_context(FakeContext())


async def refusal(call: Awaitable[object]) -> str:
    with pytest.raises(Aborted) as refused:
        await call
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details
    return refused.value.details


async def _nothing(*_: Any) -> None:
    return None


@pytest.fixture
def farm() -> FarmServicer:
    return FarmServicer(
        Farm(ReferenceSupervisor(":memory:")), lambda _: [], _nothing, _nothing, no_labels()
    )


def test_the_supervisor_bounds_names_as_the_executor_does() -> None:
    # The forwarder sends the farm's names to RegisterJob and PublishEvent.
    assert submission.MAX_NAME_CHARS == MAX_NAME_CHARS


def test_the_forwarder_knows_the_executors_receive_limit() -> None:
    # A registration over it is set aside, not retried for ever (nor sent).
    assert forwarder.MAX_REQUEST_BYTES == MAX_REQUEST_BYTES


async def test_a_non_finite_number_in_a_farm_struct_names_the_job_and_field(
    farm: FarmServicer,
) -> None:
    jobs = [dict_to_struct({"name": "ok"}), dict_to_struct({"name": "c", "priority": math.nan})]
    details = await refusal(farm.SubmitJobs(farm_pb2.SubmitJobsRequest(jobs=jobs), context()))
    # Before: "Fail to serialize NaN for Value.number_value, which would parse as string_value".
    assert details == (
        "jobs[1].priority: NaN is not a JSON number; a Struct's numbers must be finite"
    )
    submitted = await farm.SubmitJobs(
        farm_pb2.SubmitJobsRequest(jobs=[dict_to_struct({"name": "a", "agenda": ["1"]})]),
        context(),
    )
    change = farm_pb2.ChangeWorkRequest(
        job_id=submitted.jobs[0].id,
        work=["1"],
        change=farm_pb2.WORK_CHANGE_COMPLETE,
        result_package=dict_to_struct({"outputPaths": ["/a"], "size": -math.inf}),
    )
    details = await refusal(farm.ChangeWork(change, context()))
    assert details == (
        "result_package.size: -Infinity is not a JSON number; a Struct's numbers must be finite"
    )


async def test_farm_names_are_bounded(farm: FarmServicer) -> None:
    long_host = await refusal(farm.TakeWork(farm_pb2.TakeWorkRequest(host=LONG), context()))
    assert long_host == f"host is {len(LONG)} characters; the limit is {MAX_NAME_CHARS}"
    submitted = await farm.SubmitJobs(
        farm_pb2.SubmitJobsRequest(jobs=[dict_to_struct({"name": "a", "agenda": ["1"]})]),
        context(),
    )
    job_id = submitted.jobs[0].id
    start = farm_pb2.WORK_CHANGE_START
    for request, field in [
        (farm_pb2.ChangeWorkRequest(job_id=job_id, work=["1"], change=start, host=LONG), "host"),
        (farm_pb2.ChangeWorkRequest(job_id=job_id, work=["1"], change=start, actor=LONG), "actor"),
    ]:
        assert (await refusal(farm.ChangeWork(request, context()))).startswith(f"{field} is ")
    block = farm_pb2.ChangeJobRequest(job_id=job_id, verb=supervisor_pb2.JOB_VERB_BLOCK, actor=LONG)
    assert (await refusal(farm.ChangeJob(block, context()))).startswith("actor is ")
    jobs: list[tuple[dict[str, Any], str]] = [
        ({"name": LONG}, "name is"),
        ({"name": "a", "label": LONG}, "label is"),
        ({"name": "a", "user": LONG}, "user is"),
        ({"name": "a", "agenda": ["1", LONG]}, "work name 'xxxx"),
    ]
    for job, what in jobs:
        submit = farm_pb2.SubmitJobsRequest(jobs=[dict_to_struct(job)])
        details = await refusal(farm.SubmitJobs(submit, context()))
        assert details.startswith(f"job 1 of the submission: {what}"), details
        assert f"the limit is {MAX_NAME_CHARS}" in details
    # At the bound, a name is taken.
    fine = {"name": "x" * MAX_NAME_CHARS, "agenda": ["w" * MAX_NAME_CHARS]}
    await farm.SubmitJobs(farm_pb2.SubmitJobsRequest(jobs=[dict_to_struct(fine)]), context())
    await farm.TakeWork(farm_pb2.TakeWorkRequest(host="h" * MAX_NAME_CHARS), context())


async def test_register_job_refuses_what_a_job_cannot_be(engines: Engines) -> None:
    triggers = TriggerServicer(engines(Recorder()))
    job = types_pb2.Job(id=5)
    job.extra.update({"x": math.nan})
    details = await refusal(
        triggers.RegisterJob(executor_pb2.RegisterJobRequest(job=job), context())
    )
    assert details == "job.extra.x: NaN is not a JSON number; a Struct's numbers must be finite"
    for bad, field in [
        (types_pb2.Job(id=5, subjobs=[types_pb2.Subjob(id=-3)]), "job.subjobs[0].id = -3"),
        (types_pb2.Job(id=5, agenda=[types_pb2.WorkItem(name=LONG)]), "job.agenda[0].name is"),
        (types_pb2.Job(id=5, name=LONG), "job.name is"),
    ]:
        request = executor_pb2.RegisterJobRequest(job=bad)
        assert (await refusal(triggers.RegisterJob(request, context()))).startswith(field)


async def test_a_work_items_subid_says_unset_is_instance_0(engines: Engines) -> None:
    # WorkItem.subid has no presence: unset reads 0, instance 0, so only -1 says none.
    # (It was refused "-1 (or unset) means none", the words of the optional subjob_id.)
    triggers = TriggerServicer(engines(Recorder()))
    job = types_pb2.Job(id=5, agenda=[types_pb2.WorkItem(name="1", subid=-2)])
    details = await refusal(
        triggers.RegisterJob(executor_pb2.RegisterJobRequest(job=job), context())
    )
    assert details == (
        "job.agenda[0].subid = -2: an instance number is 0 or more;"
        " -1 means none (unset is 0, instance 0)"
    )


async def test_published_events_refuse_negative_instances_and_long_names(engines: Engines) -> None:
    triggers = TriggerServicer(engines(Recorder()))
    await triggers.RegisterJob(executor_pb2.RegisterJobRequest(job=types_pb2.Job(id=7)), context())
    subjob = {"name": "complete", "type": "subjob", "job_id": 7}
    for fields, details in [
        (
            subjob | {"subjob_id": -3},
            "subjob_id = -3: an instance number is 0 or more; -1 (or unset) means none",
        ),
        (subjob | {"subjob_id": -1}, "subjob_id is required for subjob events (0 or more)"),
        (
            {"name": "running", "type": "job", "job_id": 7, "event_id": "e" * 100_000},
            f"event_id is 100000 characters; the limit is {MAX_NAME_CHARS}",
        ),
        (
            {"name": "running", "type": "work", "job_id": 7, "work_name": "w" * 1_000_000},
            f"work_name is 1000000 characters; the limit is {MAX_NAME_CHARS}",
        ),
    ]:
        request = executor_pb2.PublishEventRequest(**fields)  # type: ignore[arg-type]
        assert await refusal(triggers.PublishEvent(request, context())) == details
    dry = executor_pb2.DryRunRequest(name="complete", type="host", job_id=7, host=LONG)
    assert (await refusal(triggers.DryRun(dry, context()))).startswith("host is ")
    ok = executor_pb2.PublishEventRequest(**subjob, subjob_id=0, event_id="e" * MAX_NAME_CHARS)  # type: ignore[arg-type]
    assert not (await triggers.PublishEvent(ok, context())).duplicate
