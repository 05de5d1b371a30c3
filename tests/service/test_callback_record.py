"""A running callback's own record, as ``qb.callback()`` and ``qb.jobinfo(callbacks=True)`` show it."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor_client import FarmClient
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from tests.conftest import Stack

pytestmark = pytest.mark.service

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()

PYTHON = """
me = qb.callback()
(mine,) = [c for c in qb.jobinfo(id=qb.jobid(), callbacks=True)[0]['callbacks'] if c['id'] == me['id']]
print(me['count'], mine['count'], me['pid'], mine['pid'])
"""
PERL = """
my $me = qb::callback();
my ($job) = qb::jobinfo(-id => $qb::jobid, -callbacks => 1);
my ($mine) = grep { $_->{id} == $me->{id} } @{ $job->{callbacks} };
print join(' ', $me->{count}, $mine->{count}, $me->{pid}, $mine->{pid}), "\\n";
"""


@pytest.mark.parametrize(("language", "code"), [("python", PYTHON), ("perl", PERL)])
async def test_a_callbacks_first_run_reads_the_same_count_both_ways_and_its_pid(
    stack_warm: Stack, language: str, code: str
) -> None:
    # qb.callback()['count'] was 1 while the record jobinfo gave said 0; neither had pid.
    callback = {"triggers": "submit-job-self", "language": language, "code": code}
    async with FarmClient(stack_warm.channel) as farm:
        (job,) = (await farm.submit_jobs([{"name": "countme", "callbacks": [callback]}])).jobs
        await stack_warm.settle()

    (run,) = (await stack_warm.client.list_runs(job_id=job.id)).runs
    result = (await stack_warm.client.get_run(run.invocation_id)).result
    assert result.stdout == f"1 1 {job.id} {job.id}\n", result


@pytest.mark.parametrize(("language", "code"), [("python", PYTHON), ("perl", PERL)])
async def test_an_executes_count_is_the_callers_and_the_readme_says_so(
    stack_warm: Stack, language: str, code: str
) -> None:
    # The README said a run's count is 1 in its first run; an Execute read 0. No trigger
    # of the executor fired it: the count is the caller's, as given (0 when none).
    callback = {"triggers": "complete-job-self", "language": language, "code": code}
    async with FarmClient(stack_warm.channel) as farm:
        (job,) = (await farm.submit_jobs([{"name": "countme", "callbacks": [callback]}])).jobs
        await stack_warm.settle()
    record = stack_warm.supervisor.job(job.id, include_callbacks=True)

    def request(count: int) -> executor_pb2.ExecuteRequest:
        return executor_pb2.ExecuteRequest(
            callback=types_pb2.Callback(
                id=1, triggers="complete-job-self", language=language, code=code, count=count
            ),
            context=executor_pb2.JobContext(job=job_from_dict(record)),
        )

    by_hand = await stack_warm.client.execute(request(0))
    assert by_hand.stdout == f"0 0 {job.id} {job.id}\n", by_hand
    counted = await stack_warm.client.execute(request(3))
    assert counted.stdout == f"3 3 {job.id} {job.id}\n", counted
    said = (
        "An `Execute` run's `count` is the request's `callback.count` as given, `0` when it "
        "gives none"
    )
    found = said in " ".join(README.split())
    assert found, said
