"""A running callback's own record, as ``qb.callback()`` and ``qb.jobinfo(callbacks=True)`` show it."""

from __future__ import annotations

import pytest

from supervisor_client import FarmClient
from tests.conftest import Stack

pytestmark = pytest.mark.service

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
