"""Callback languages end to end: Qube's mail language, and languages nothing can run."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import grpc
import pytest

from executor.triggers.registration import MAX_OWN_CALLBACK_ID
from supervisor_client import FarmClient, InvalidRequestError
from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from tests.conftest import Stack
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service


def subjects(mail_dir: Path) -> list[str]:
    return [
        str(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Subject"])
        for p in sorted((mail_dir / "new").glob("*.eml"))
    ]


async def test_a_mail_callback_mails_when_its_job_is_done(stack_warm: Stack) -> None:
    # As Qube submitters write it: no code, the supervisor mails the job's status.
    job = {
        "name": "comp",
        "user": "alice",
        "mailaddress": "lead@studio.example",
        "agenda": ["1", "2"],
        "callbacks": [
            {"triggers": "done-job-self", "language": "mail"},
            {"triggers": "complete-work-self-*", "language": "MAIL"},
        ],
    }
    mail_dir = stack_warm.settings.mail_settings.directory
    async with FarmClient(stack_warm.channel) as farm:
        (stored,) = (await farm.submit_jobs([job])).jobs
        await farm.change_work(job_id=stored.id, work=["1-2"], change="complete")
        await stack_warm.settle()

    assert sorted(subjects(mail_dir)) == [
        f"[qube] job {stored.id} (comp) is complete",
        f"[qube] job {stored.id} (comp) work 1 is complete",
        f"[qube] job {stored.id} (comp) work 2 is complete",
    ]
    runs = (await stack_warm.client.list_runs(job_id=stored.id)).runs
    assert sorted(r.language for r in runs) == ["mail", "mail", "mail"]
    assert {r.outcome for r in runs} == {Outcome.OUTCOME_SUCCEEDED}
    for run in runs:  # each sent mail is one of its run's actions, as GetRun tells
        actions = (await stack_warm.client.get_run(run.invocation_id)).result.actions
        assert [(a.verb, a.target, a.ok) for a in actions][-1:] == [
            ("mail", "lead@studio.example", True)
        ]
        assert actions[-1].message.startswith("mailed '[qube] job ")

    def counts() -> list[int]:
        job = stack_warm.supervisor.job(stored.id, include_callbacks=True)
        return [cb["count"] for cb in job["callbacks"]]

    # qb.jobinfo(..., '-callbacks') counts the runs the supervisor was told of.
    assert await eventually(lambda: counts() == [1, 2]), counts()


async def test_a_done_mail_tells_the_failure_a_requeue_has_moved_on(stack_warm: Stack) -> None:
    # The job's failed-job-self requeues it before its done mails are sent (one event's
    # firings run in callback id order): the mails still say it failed, not "blocked".
    failing = {
        "name": "mailrace",
        "user": "alice",
        "mailaddress": "lead@studio.example",
        "agenda": ["1"],
        "callbacks": [
            {
                "triggers": "failed-job-self",
                "language": "python",
                "code": "qb.requeue(qb.jobid())",
                "maximum": 1,
            },
            {"triggers": "done-job-self", "language": "mail"},
            {"triggers": "done-job-self", "language": "qube", "code": "mail-status"},
        ],
    }
    # The same for a frame retried by its own failed-work-self-* (frame 2 keeps the job on).
    retried = {
        "name": "frames",
        "user": "alice",
        "mailaddress": "lead@studio.example",
        "agenda": ["1", "2"],
        "callbacks": [
            {"triggers": "failed-work-self-*", "code": "retry-work-self", "maximum": 1},
            {"triggers": "done-work-self-*", "language": "mail"},
        ],
    }
    mail_dir = stack_warm.settings.mail_settings.directory
    async with FarmClient(stack_warm.channel) as farm:
        job, frames = (await farm.submit_jobs([failing, retried])).jobs
        await farm.change_work(job_id=job.id, work=["1"], change="fail")
        await farm.change_work(job_id=frames.id, work=["1"], change="fail")
        await stack_warm.settle()

    assert stack_warm.supervisor.job(job.id)["status"] == "blocked"
    assert stack_warm.supervisor.job(frames.id)["agenda"][0]["status"] == "pending"
    assert sorted(subjects(mail_dir)) == [
        f"[qube] job {job.id} (mailrace) is failed",
        f"[qube] job {job.id} (mailrace) is failed",
        f"[qube] job {frames.id} (frames) work 1 is failed",
    ]


async def test_the_mail_flag_mails_when_the_job_is_done(stack_warm: Stack) -> None:
    # Qube's qbsub --mail (flags 1024): the job's done mail, as a mail callback sends it.
    jobs: list[dict[str, Any]] = [
        {"name": "flagged", "agenda": ["1"], "flags": "mail", "mailaddress": "td@example.com"},
        {"name": "numbered", "user": "bob", "agenda": ["1"], "flags": 1024},
        {"name": "plain", "agenda": ["1"]},
    ]
    mail_dir = stack_warm.settings.mail_settings.directory
    async with FarmClient(stack_warm.channel) as farm:
        flagged, numbered, plain = (await farm.submit_jobs(jobs)).jobs
        await farm.change_work(job_id=flagged.id, work=["1"], change="complete")
        await farm.change_work(job_id=numbered.id, work=["1"], change="fail")
        await farm.change_work(job_id=plain.id, work=["1"], change="complete")
        await stack_warm.settle()

    sent = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in (mail_dir / "new").glob("*.eml")
    ]
    assert sorted((str(m["To"]), str(m["Subject"])) for m in sent) == [
        ("bob@localhost", f"[qube] job {numbered.id} (numbered) is failed"),
        ("td@example.com", f"[qube] job {flagged.id} (flagged) is complete"),
    ]
    runs = (await stack_warm.client.list_runs(job_id=flagged.id)).runs
    assert [(r.language, r.outcome) for r in runs] == [("mail", Outcome.OUTCOME_SUCCEEDED)]


async def test_execute_runs_a_mail_callback_without_code(stack_warm: Stack) -> None:
    job = stack_warm.supervisor.submit([{"name": "solo", "user": "bob"}])[0]
    response = await stack_warm.client.execute_callback(language="mail", code="", job=job)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure
    assert response.stdout.startswith("mail: mailed the job status (pending)")
    assert subjects(stack_warm.settings.mail_settings.directory) == [
        f"[qube] job {job['id']} (solo) is pending"
    ]


@pytest.mark.parametrize(("mail_language", "code"), [("mail", ""), ("qube", "mail-status")])
async def test_a_mail_of_a_removed_job_fails_saying_the_supervisor_has_none(
    stack_warm: Stack, caplog: pytest.LogCaptureFixture, mail_language: str, code: str
) -> None:
    # The supervisor's jobinfo reads no job for it (Qube's client answers an unknown id so).
    job = stack_warm.supervisor.submit([{"name": "gone", "user": "bob"}])[0]
    stack_warm.supervisor.job_action("remove", job["id"], "bob")

    with caplog.at_level("ERROR"):
        response = await stack_warm.client.execute_callback(
            language=mail_language, code=code, job=job
        )

    named = code or "mail"
    assert response.outcome == Outcome.OUTCOME_FAILED
    assert response.failure.exception_type == "NoSuchJob"
    assert response.failure.message == (
        f"{named}: NoSuchJob: the supervisor has no job {job['id']}"
    )
    assert [(a.verb, a.ok) for a in response.actions] == [("jobinfo", True)]
    assert subjects(stack_warm.settings.mail_settings.directory) == []
    assert "failed inside the executor" not in caplog.text


@pytest.mark.parametrize("language", ["ruby", "javascript", "post"])
async def test_a_language_nothing_runs_is_refused_at_submission(
    stack_warm: Stack, language: str
) -> None:
    jobs: list[dict[str, Any]] = [
        {"name": "ok"},
        {"name": "bad", "callbacks": [{"triggers": "done-job-self", "language": language}]},
    ]
    async with FarmClient(stack_warm.channel) as farm:
        with pytest.raises(InvalidRequestError) as refused:
            await farm.submit_jobs(jobs)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details == (
            f"job 2 of the submission, callback 1: language: {language!r} is not a callback "
            "language; expected python, perl, qube, mail"
        )
        assert list((await farm.list_jobs()).jobs) == []  # all or nothing

    with pytest.raises(InvalidRequestError) as refused:
        await stack_warm.client.register_job(
            {
                "id": 7,
                "name": "direct",
                "callbacks": [
                    {"triggers": "done-job-self", "language": "python", "code": "pass"},
                    {"triggers": "done-job-self", "language": language, "code": "x"},
                ],
            }
        )
    assert refused.value.details.startswith(f"job.callbacks[1].language: {language!r} is not")
    assert (await stack_warm.client.list_registered_jobs()).jobs == []


async def test_a_language_is_taken_in_any_case(stack_warm: Stack) -> None:
    response = await stack_warm.client.register_job(
        {
            "id": 8,
            "name": "cased",
            "callbacks": [{"triggers": "done-job-self", "language": " Python ", "code": "pass"}],
        }
    )
    assert [cb.language for cb in response.callbacks] == ["python"]


async def test_callback_ids_are_unique_within_a_job(stack_warm: Stack) -> None:
    def job(*ids: int) -> dict[str, Any]:
        callbacks = [
            {"id": i, "triggers": f"{name}-job-self", "language": "qube"}
            for i, name in zip(ids, ("done", "complete", "failed"), strict=False)
        ]
        return {"id": 9, "name": "ids", "callbacks": callbacks}

    with pytest.raises(InvalidRequestError) as refused:
        await stack_warm.client.register_job(job(1, 1))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == (
        "job.callbacks[1].id: 1 is also job.callbacks[0]'s; a job's callback ids are unique"
    )
    # An unset id takes the next one no other callback of the job has.
    response = await stack_warm.client.register_job(job(0, 1, 0))
    assert sorted((cb.id, cb.triggers) for cb in response.callbacks) == [
        (1, "complete-job-self"),
        (2, "done-job-self"),
        (3, "failed-job-self"),
    ]


async def test_a_callback_id_leaves_room_for_the_universal_ones_numbered_after_it(
    stack_warm: Stack,
) -> None:
    """Probe 177: id 4294967295 beside a universal line stored one at 2^32 (not a uint32).

    RegisterJob answered INTERNAL having stored it; every later read of the registered
    jobs answered INTERNAL, and the universal callback's firing lost its result.
    """
    universal = stack_warm.settings.universal_callback_dirs[0]
    universal.mkdir(parents=True, exist_ok=True)
    (universal / "u.py").write_text("print('u')\n")
    (universal / "callbacks.conf").write_text("u.py = complete-job-self\n")
    assert (await stack_warm.client.reload_universal_callbacks()).active == 1

    def job(job_id: int, callback_id: int) -> dict[str, Any]:
        own = {"id": callback_id, "triggers": "complete-job-self", "language": "qube"}
        return {"id": job_id, "name": "ids", "callbacks": [own]}

    with pytest.raises(InvalidRequestError) as refused:
        await stack_warm.client.register_job(job(9, MAX_OWN_CALLBACK_ID + 1))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == (
        f"job.callbacks[0].id: {MAX_OWN_CALLBACK_ID + 1} is above {MAX_OWN_CALLBACK_ID}, the "
        "largest id a job's own callback may have: the universal callbacks (at most 1000) are "
        "numbered after the job's own, within 2^32 - 1"
    )
    assert MAX_OWN_CALLBACK_ID + 1000 == 2**32 - 1
    response = await stack_warm.client.register_job(job(10, MAX_OWN_CALLBACK_ID))
    assert [cb.id for cb in response.callbacks] == [MAX_OWN_CALLBACK_ID, MAX_OWN_CALLBACK_ID + 1]
    listed = await stack_warm.client.list_registered_jobs()
    assert [j.id for j in listed.jobs] == [10]


async def test_an_over_long_language_is_refused_as_a_name_too_long(stack_warm: Stack) -> None:
    """Said as every over-long name is (README), not echoed whole as "not supported"."""
    long = "p" * 1025
    too_long = "is 1025 characters; the limit is 1024"
    job = stack_warm.supervisor.submit([{"name": "solo", "user": "bob"}])[0]
    with pytest.raises(InvalidRequestError) as refused:
        await stack_warm.client.execute_callback(language=long, code="print(1)", job=job)
    assert refused.value.details == f"callback.language {too_long}"

    with pytest.raises(InvalidRequestError) as refused:
        await stack_warm.client.register_job(
            {
                "id": 7,
                "name": "direct",
                "callbacks": [{"triggers": "done-job-self", "language": long}],
            }
        )
    assert refused.value.details == f"job.callbacks[0].language {too_long}"

    async with FarmClient(stack_warm.channel) as farm:
        with pytest.raises(InvalidRequestError) as refused:
            await farm.submit_jobs(
                [{"name": "bad", "callbacks": [{"triggers": "done-job-self", "language": long}]}]
            )
    assert refused.value.details == f"job 1 of the submission, callback 1: language {too_long}"
