"""qube code strings end to end: comments, work item names and look-alikes (probe 99)."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor_client import FarmClient
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2
from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from tests.conftest import Stack

pytestmark = pytest.mark.service


def _job(agenda: list[str], triggers: str, code: str, language: str = "qube") -> dict[str, Any]:
    return {
        "name": "qube",
        "user": "alice",
        "agenda": agenda,
        "callbacks": [{"triggers": triggers, "language": language, "code": code, "maximum": 1}],
    }


# What each language writes for the qube code string "<verb>-work-self".
WORK_SELF = {
    "qube": "{verb}-work-self",
    "python": "import qb\nqb.work{verb}('%s:%s' % (qb.jobid(), qb.workid()))\n",
    "perl": 'use qb;\nqb::work{verb}("$qb::jobid:" . qb::workid());\n',
}


async def _runs(stack: Stack, job_id: int) -> list[executor_pb2.ExecuteResponse]:
    listed = (await stack.client.list_runs(job_id=job_id)).runs
    return [(await stack.client.get_run(r.invocation_id)).result for r in listed]


async def test_a_comment_holding_a_semicolon_runs_nothing(stack_warm: Stack) -> None:
    # It failed the job: the text after the ';' of a comment line ran as fail-self.
    code = "# NOTE: do not fail-self here; fail-self\nunblock-self # a no-op; kill-self\n"
    async with FarmClient(stack_warm.channel) as farm:
        (job,) = (await farm.submit_jobs([_job(["1", "2"], "running-work-self-*", code)])).jobs
        assert (await farm.take_work("worker-1")).work_name == "1"
        await stack_warm.settle()
        status = (await farm.get_job(job.id)).job.status

    assert status == "running"
    (result,) = await _runs(stack_warm, job.id)
    assert result.outcome == Outcome.OUTCOME_SUCCEEDED, result.failure.message
    assert [(a.verb, a.target) for a in result.actions] == [("unblock", str(job.id))]


async def test_a_fired_callback_runs_its_code_strings_up_to_one_without_its_item(
    stack_warm: Stack,
) -> None:
    # Probe 144: a work or instance code string on a job event stopped the callback before
    # any code string ran (no mail went), and one commented out was REJECTED at each firing.
    mailing = "mail-status; mail-subjob-status; block-work-self; fail-self"
    submitted = _job(["1", "2"], "running-job-self", "# not yet; fail-self")
    submitted["callbacks"].append(
        {"triggers": "running-job-self", "language": "qube", "code": mailing, "maximum": 1}
    )
    async with FarmClient(stack_warm.channel) as farm:
        (job,) = (await farm.submit_jobs([submitted])).jobs
        assert (await farm.take_work("worker-1")).work_name == "1"
        await stack_warm.settle()
        job_now = (await farm.get_job(job.id)).job

    assert job_now.status == "running"  # fail-self, after the failing code string, never ran
    assert {w.name: w.status for w in job_now.agenda} == {"1": "running", "2": "pending"}
    listed = (await stack_warm.client.list_runs(job_id=job.id)).runs
    results = {
        r.callback_id: (await stack_warm.client.get_run(r.invocation_id)).result for r in listed
    }
    commented, mailed = results[1], results[2]
    assert commented.outcome == Outcome.OUTCOME_SUCCEEDED, commented.failure.message
    assert (list(commented.actions), commented.stdout) == ([], "")
    assert mailed.outcome == Outcome.OUTCOME_FAILED
    assert mailed.failure.exception_type == "MailError"  # the first failure: the mail's
    assert [(a.verb, a.ok) for a in mailed.actions] == [("jobinfo", True), ("mail", True)]
    assert [line.split(":")[0] for line in mailed.stdout.splitlines()] == [
        "mail-status",
        "mail-subjob-status",
    ]


@pytest.mark.parametrize("language", ["qube", "python", "perl"])
@pytest.mark.parametrize(
    ("item", "verb", "left"),
    [
        ("5,6", "fail", "failed"),  # it failed frames 5 and 6 instead
        (" 5", "complete", "complete"),  # it completed frame 5
        ("3-4,9", "fail", "failed"),  # it failed frames 3, 4 and 9 (NoSuchWork without 9)
    ],
)
async def test_a_work_verb_acts_on_the_triggering_item_by_its_name(
    stack_warm: Stack, language: str, item: str, verb: str, left: str
) -> None:
    agenda = [item, "3", "4", "5", "6", "9"]
    code = WORK_SELF[language].format(verb=verb)
    async with FarmClient(stack_warm.channel) as farm:
        submitted = _job(agenda, "running-work-self-*", code, language)
        (job,) = (await farm.submit_jobs([submitted])).jobs
        assert (await farm.take_work("worker-1")).work_name == item
        await stack_warm.settle()
        statuses = {w.name: w.status for w in (await farm.get_job(job.id)).job.agenda}

    (result,) = await _runs(stack_warm, job.id)
    assert result.outcome == Outcome.OUTCOME_SUCCEEDED, result.failure.message
    assert [(a.verb, a.target) for a in result.actions] == [("work" + verb, f"{job.id}:{item}")]
    others = dict.fromkeys(["3", "4", "5", "6", "9"], "pending")
    assert statuses == {item: left, **others}


async def test_change_work_of_an_items_whole_name_changes_that_item(stack_warm: Stack) -> None:
    async with FarmClient(stack_warm.channel) as farm:
        (job,) = (await farm.submit_jobs([{"name": "w", "agenda": ["5,6", "5", "6"]}])).jobs
        changed = await farm.change_work(job_id=job.id, work=["5,6"], change="block")
        assert changed.changed == 1
        listed = await farm.change_work(job_id=job.id, work=["5, 6"], change="block")
        assert listed.changed == 2  # no item is so named: the list, as before
        statuses = {w.name: w.status for w in (await farm.get_job(job.id)).job.agenda}
    assert statuses == {"5,6": "blocked", "5": "blocked", "6": "blocked"}


@pytest.mark.parametrize(
    ("code", "unknown"),
    [
        # A harmless comment made every firing REJECTED, quoting its words as code.
        ("# mails the job status; see the wiki\nmail-status", None),
        # A Kelvin sign ran as unblock-self with no warning; strict accepted it.
        ("unbloc\u212a-self", "'unbloc\\u212a-self'"),
    ],
)
async def test_registration_checks_the_code_strings_that_run(
    stack_warm: Stack, code: str, unknown: str | None
) -> None:
    callbacks = [{"triggers": "complete-job-self", "language": "qube", "code": code}]
    wire = job_from_dict({"id": 7, "user": "alice", "callbacks": callbacks})
    request = executor_pb2.RegisterJobRequest(job=wire)

    reply = await stack_warm.triggers.RegisterJob(request, timeout=60)

    messages = [w.message for w in reply.warnings]
    if unknown is None:
        assert messages == []
    else:
        (message,) = messages
        assert message.startswith(
            f"each firing would be REJECTED: unknown qube code string {unknown};"
        )
