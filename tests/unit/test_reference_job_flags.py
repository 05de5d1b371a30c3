"""Qube's ``mail`` job flag: the reference supervisor turns it into the job's done mail."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from supervisor_client.reference import ReferenceSupervisor, SubmitError

pytestmark = pytest.mark.unit

DONE_MAIL = {"triggers": "done-job-self", "language": "mail", "code": "", "maximum": 0}


@pytest.fixture
def sup() -> Iterator[ReferenceSupervisor]:
    with ReferenceSupervisor(":memory:") as supervisor:
        yield supervisor


def callbacks(sup: ReferenceSupervisor, **fields: Any) -> list[dict[str, Any]]:
    (job,) = sup.submit([{"name": "render", "user": "alice", **fields}])
    stored = sup.job(int(job["id"]), include_callbacks=True)["callbacks"]
    return [{k: cb[k] for k in DONE_MAIL} for cb in stored]


@pytest.mark.parametrize(
    "flags",
    ["mail", "MAIL", "auto_wrangling,mail", "auto_wrangling mail", 1024, 1024 + 16384, "1024"],
)
def test_the_mail_flag_adds_the_done_mail_callback(sup: ReferenceSupervisor, flags: Any) -> None:
    assert callbacks(sup, flags=flags) == [DONE_MAIL]


def test_the_done_mail_comes_after_the_jobs_own_and_dependency_callbacks(
    sup: ReferenceSupervisor,
) -> None:
    own = {"triggers": "complete-job-self", "language": "qube", "code": "mail-status"}
    found = callbacks(sup, flags="mail", callbacks=[own], waitfor=99)
    assert [(cb["triggers"], cb["language"]) for cb in found] == [
        ("complete-job-self", "qube"),
        ("done-job-99", "qube"),
        ("done-job-self", "mail"),
    ]


@pytest.mark.parametrize("flags", [None, "", 0, 16384, "auto_wrangling", "mailbox", 1023])
def test_without_the_mail_flag_no_mail_is_added(sup: ReferenceSupervisor, flags: Any) -> None:
    assert callbacks(sup, flags=flags) == []


def test_a_job_that_already_mails_when_done_gets_no_second_mail(sup: ReferenceSupervisor) -> None:
    # A resubmitted jobinfo dict lists the callback the flag added.
    own = {"triggers": " done-job-self ", "language": "Mail"}
    assert len(callbacks(sup, flags=1024, callbacks=[own])) == 1


@pytest.mark.parametrize("flags", [-1, True, 1.5, ["mail"], {"mail": 1}])
def test_a_malformed_flags_value_is_refused_naming_it(sup: ReferenceSupervisor, flags: Any) -> None:
    with pytest.raises(SubmitError) as refused:
        sup.submit([{"name": "ok"}, {"name": "bad", "flags": flags}])
    assert str(refused.value) == (
        "job 2 of the submission: flags must be Qube's flag number (mail is 1024) or flag "
        f"names separated by ',' or spaces (as 'mail'), got {flags!r}"
    )
    assert sup.jobs() == []


def test_the_flags_are_kept_as_submitted(sup: ReferenceSupervisor) -> None:
    (job,) = sup.submit([{"name": "render", "flags": "mail,auto_wrangling"}])
    assert sup.job(int(job["id"]))["flags"] == "mail,auto_wrangling"
