"""What ``qb.event()['context']`` says: the job the event happened to, never a wrong one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor_client import FarmClient
from tests.conftest import Stack

pytestmark = pytest.mark.service

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
PYTHON = "print(qb.event()['context'])"
PERL = 'print qb::event()->{context}, "\\n";'


async def context_seen(stack: Stack, job: dict[str, Any], event: str, language: str) -> str:
    name, type_, context, *extra = event.split("-", 3)
    response = await stack.client.execute_callback(
        language=language,
        code=PYTHON if language == "python" else PERL,
        job=job,
        event={"name": name, "type": type_, "context": context, "extra": "".join(extra)},
        work_name="".join(extra) if type_ == "work" else "",
    )
    assert response.stdout.endswith("\n"), response
    return response.stdout.strip()


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_an_executes_event_context_names_the_job_as_the_trigger_engine_would(
    stack_warm: Stack, language: str
) -> None:
    # Any context not of digits read as the callback's own job: an event of job 900
    # (labelled srclbl) showed 901, and qb.jobstatus(int(context)) read the wrong job.
    await stack_warm.client.register_job(
        {"id": 900, "pgrp": 900, "label": "srclbl", "user": "alice"}
    )
    job = {"id": 901, "pgrp": 900, "pid": 77, "label": "me", "user": "alice", "name": "x"}
    orphan = {"id": 902, "pgrp": 902, "user": "alice", "name": "y"}
    cases = [
        (job, "complete-work-srclbl-2", "900"),  # a label registered in its pgrp
        (job, "complete-job-parent", "77"),  # its pid
        (job, "complete-job-self", "901"),
        (job, "complete-job-me", "901"),  # its own label
        (job, "complete-job-950", "950"),
        (job, "complete-job-007", "7"),
        # No job is 0: it showed "" (probe 112).
        (job, "complete-job-0", "0"),
        (job, "complete-work-00-1", "00"),
        # What the executor cannot resolve is shown as given, never as a job id.
        (job, "complete-job-nosuch", "nosuch"),
        (orphan, "complete-job-parent", "parent"),  # no pid
        (orphan, "complete-job-srclbl", "srclbl"),  # that label is pgrp 900's
    ]
    for owner, event, expected in cases:
        assert await context_seen(stack_warm, owner, event, language) == expected, event

    (run, *_) = (await stack_warm.client.list_runs(job_id=902)).runs
    assert (run.event.context, run.event.extra) == ("srclbl", "")  # as the history keeps it
    said = (
        "the id of the job it happened to; in an `Execute` run, a context the executor "
        "cannot resolve is shown as given"
    )
    found = said in " ".join(README.split())
    assert found, said


async def test_a_fired_callbacks_event_context_is_the_job_it_happened_to(
    stack_warm: Stack,
) -> None:
    callback = {"triggers": "complete-work-src-1", "language": "python", "code": PYTHON}
    async with FarmClient(stack_warm.channel) as farm:
        source, owner = (
            await farm.submit_jobs(
                [
                    {"name": "src", "label": "src", "agenda": [{"name": "1"}]},
                    {"name": "own", "callbacks": [callback]},
                ]
            )
        ).jobs
        await stack_warm.settle()
        stack_warm.supervisor.start_work(source.id, "1")
        stack_warm.supervisor.complete_work(source.id, "1")
        await stack_warm.settle()

    (run,) = (await stack_warm.client.list_runs(job_id=owner.id)).runs
    result = (await stack_warm.client.get_run(run.invocation_id)).result
    assert result.stdout == f"{source.id}\n", result
    assert run.event.context == str(source.id)


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_subjob_event_naming_no_instance_shows_its_extra_as_written(
    stack_warm: Stack, language: str
) -> None:
    # Probe 178: `complete-subjob-self-*` beside qb.subid() 1 showed extra '-1', the
    # executor's "no instance", which it refuses as an extra.
    code = {
        "python": "print(repr(qb.event()['extra']), qb.subid())",
        "perl": 'print "\'", qb::event()->{extra}, "\' ", qb::subid(), "\\n";',
    }[language]
    job = {"id": 905, "user": "alice", "name": "x"}
    for extra, subjob_id in (("*", 1), ("", 1), ("3", 3)):
        response = await stack_warm.client.execute_callback(
            language=language,
            code=code,
            job=job,
            event={"name": "complete", "type": "subjob", "context": "self", "extra": extra},
            subjob_id=subjob_id,
        )
        assert response.stdout == f"'{extra}' {subjob_id}\n", (extra, response)


async def test_a_context_function_given_an_argument_says_how_many(stack_warm: Stack) -> None:
    # Probe 178: "it was given 1" read as the value passed, not as a count.
    code = (
        "for call in (lambda: qb.jobid(7), lambda: qb.workid(1, 2)):\n"
        "    try:\n"
        "        call()\n"
        "    except qb.InvalidArgument as err:\n"
        "        print(err)\n"
    )
    job = {"id": 906, "user": "alice", "name": "x"}
    response = await stack_warm.client.execute_callback(language="python", code=code, job=job)
    assert response.stdout.splitlines() == [
        "qb.jobid takes no arguments, as in qb.jobid(); it was given 1 argument",
        "qb.workid takes no arguments, as in qb.workid(); it was given 2 arguments",
    ]
