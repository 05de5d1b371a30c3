"""A dependency's release runs whatever the owner's policy ``verbs``; nothing else gets past them."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.config import Settings
from executor.dependency_release import dependency_release_verb
from executor.host_api import HostApi
from executor.model import CallbackSpec, Invocation, Outcome
from executor.policies import Policy, resolve
from executor.runtimes.mail import MailSettings
from executor.runtimes.qube import QubeInterpreter
from supervisor_client.reference import ReferenceSupervisor
from supervisor_client.reference.dependency import parse_dependency
from tests.helpers.supervisor_port import LIMITS, ReferencePort

pytestmark = pytest.mark.unit


def fired(
    triggers: str,
    code: str = "unblock-self",
    *,
    maximum: int = 1,
    language: str = "qube",
    source: str = "job",
    job: dict[str, Any] | None = None,
    work_name: str = "",
) -> Invocation:
    """The invocation of a job's callback as the trigger engine fires it."""
    return Invocation(
        invocation_id=f"test-{abs(hash((triggers, code, maximum, work_name)))}",
        callback=CallbackSpec(
            language=language, code=code, triggers=triggers, id=1, user="lead", maximum=maximum
        ),
        job=job or {"id": 9, "user": "lead"},
        limits=LIMITS,
        source=source,
        work_name=work_name,
    )


def from_spec(callback: dict[str, Any], **kwargs: Any) -> Invocation:
    return fired(callback["triggers"], callback["code"], maximum=callback["maximum"], **kwargs)


@pytest.mark.parametrize(
    ("attributes", "verb"),
    [
        ({"dependency": "12"}, "unblock"),
        ({"waitfor": [3, 4]}, "unblock"),
        ({"dependency": "link-failed-job-render, link-killed-job-7, 8"}, "unblock"),
        ({"dependency": "done-job-render"}, "unblock"),
        ({"dependency": "link-complete-work-render", "agenda": ["1"]}, "workunblock"),
        ({"dependency": "link-done-work-12, link-killed-work-lights", "agenda": ["1"]}, None),
    ],
)
def test_every_callback_a_dependency_makes_may_release_its_job(
    attributes: dict[str, Any], verb: str | None
) -> None:
    dependency = parse_dependency("job 1", {"user": "lead", **attributes})
    for callback in dependency.callbacks:
        assert dependency_release_verb(from_spec(callback)) == (
            verb
            or {"unblock-self": "unblock", "unblock-work-self": "workunblock"}[callback["code"]]
        )


@pytest.mark.parametrize(
    ("why", "invocation"),
    [
        # Not the release's form: it could unblock the job whenever it is blocked.
        ("its own block", fired("blocked-job-self")),
        ("its own submission", fired("submit-job-self")),
        ("its own end", fired("complete-job-self")),
        ("a parent", fired("complete-job-parent")),
        ("any of several", fired("complete-job-12 || complete-job-13")),
        ("a start", fired("running-job-12")),
        ("a clock", fired("complete-job-12 && time-900000000")),
        ("more than once", fired("complete-job-12", maximum=0)),
        ("twice", fired("complete-job-12", maximum=2)),
        ("another code too", fired("complete-job-12", "unblock-self; kill-self")),
        ("another verb", fired("complete-job-12", "unblock-subjob-self")),
        ("any frame", fired("complete-work-12-*", "unblock-work-self")),
        ("a named frame", fired("complete-work-12-5", "unblock-work-self")),
        ("a job end for frames", fired("complete-job-12", "unblock-work-self")),
        ("frames for the job", fired("complete-work-12-{work}", "unblock-self")),
        ("python", fired("complete-job-12", "qb.unblock(qb.jobid())", language="python")),
        ("an Execute request", fired("complete-job-12", source="execute")),
        ("a callbacks.conf line", fired("complete-job-12", source="universal")),
        ("no trigger", fired("")),
    ],
)
def test_no_other_callback_gets_past_the_verbs(why: str, invocation: Invocation) -> None:
    assert dependency_release_verb(invocation) is None, why


def test_a_release_written_by_hand_in_another_case_or_spacing_is_the_same() -> None:
    assert dependency_release_verb(
        fired("complete-job-12  &&  done-job-render", " UNBLOCK-self\n")
    ) == ("unblock")


# -- run through the host API under a policy that grants only kill ------------------------


@pytest.fixture
def supervisor() -> Iterator[ReferenceSupervisor]:
    with ReferenceSupervisor() as store:
        yield store


def kill_only(tmp_path: Path) -> Policy:
    defaults = Settings()
    found = resolve(
        {"ops": {"verbs": ["kill"], "users": ["lead"]}},
        network_host=False,
        languages=defaults.languages,
        default_limits=defaults.default_limits,
        max_limits=defaults.max_limits,
        data_dir=tmp_path,
        protected_files=[],
        keep=[sys.prefix],
        environ={},
    ).get("ops")
    assert found is not None
    return found


async def run(
    supervisor: ReferenceSupervisor, invocation: Invocation, policy: Policy, tmp_path: Path
) -> Any:
    interpreter = QubeInterpreter(MailSettings(directory=tmp_path / "mail"))
    invocation = dataclasses.replace(invocation, policy=policy.name)
    host = HostApi(ReferencePort(supervisor), invocation, policy)
    return await interpreter.run(invocation, host)


async def test_a_dependency_releases_its_job_and_frames_under_a_policy_without_unblock(
    supervisor: ReferenceSupervisor, tmp_path: Path
) -> None:
    # Before, each release was FAILED: 'qb.unblock is not allowed by the sandbox policy
    # 'ops' of this callback (policies.ops.verbs)', and the job stayed blocked for ever.
    policy = kill_only(tmp_path)
    (first,) = supervisor.submit([{"name": "A", "user": "lead", "agenda": ["1"]}])
    held, framed = supervisor.submit(
        [
            {"name": "B", "user": "lead", "waitfor": first["id"]},
            {
                "name": "C",
                "user": "lead",
                "agenda": ["1"],
                "dependency": f"link-done-work-{first['id']}",
            },
        ]
    )
    assert held["status"] == "blocked"
    for job, work_name in ((held, ""), (framed, "1")):
        (callback,) = supervisor.job(job["id"], include_callbacks=True)["callbacks"]
        invocation = from_spec(callback, job=supervisor.job(job["id"]), work_name=work_name)

        result = await run(supervisor, invocation, policy, tmp_path)

        assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert supervisor.job(held["id"])["status"] == "pending"
    assert [w["status"] for w in supervisor.job(framed["id"])["agenda"]] == ["pending"]


async def test_an_unblock_of_another_form_is_still_refused_by_the_verbs(
    supervisor: ReferenceSupervisor, tmp_path: Path
) -> None:
    policy = kill_only(tmp_path)
    (job,) = supervisor.submit([{"name": "B", "user": "lead", "status": "blocked"}])
    invocation = fired("blocked-job-self", job=supervisor.job(job["id"]))

    result = await run(supervisor, invocation, policy, tmp_path)

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert "qb.unblock is not allowed by the sandbox policy 'ops'" in result.failure.message
    assert "(policies.ops.verbs)" in result.failure.message
    assert supervisor.job(job["id"])["status"] == "blocked"
