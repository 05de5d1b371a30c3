"""ReferenceSupervisor.hold_as_given: a jobinfo dict held as it is (``cbexec run --embedded``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from supervisor_client.reference import ReferenceSupervisor, SubmitError, Transition
from supervisor_client.reference.qube_time import QB_TIME_EPOCH_OFFSET
from tests.helpers.clock import Clock

pytestmark = pytest.mark.unit


@pytest.fixture
def events() -> list[Transition]:
    return []


@pytest.fixture
def sup(events: list[Transition]) -> Iterator[ReferenceSupervisor]:
    with ReferenceSupervisor(":memory:", listeners=[events.append], clock=Clock()) as supervisor:
        yield supervisor


def ended_job() -> dict[str, Any]:
    """A failed job's jobinfo output: an ended agenda, its instances, a counted callback."""
    return {
        "id": 12,
        "name": "shot",
        "label": "lighting",
        "pgrp": 10,
        "user": "alice",
        "status": "failed",
        "cpus": 2,
        "timesubmit": 1000,
        "timestart": 1010,
        "timecomplete": 1100,
        "agenda": [
            {
                "name": "1",
                "status": "complete",
                "subid": 0,
                "host": "node7",
                "count": 1,
                "resultpackage": {"outputPaths": "/out/1.exr"},
            },
            {"name": "2", "status": "failed", "subid": 1, "host": "node8", "count": 3},
            {"name": "3", "status": "killed"},
        ],
        "subjobs": [
            {"id": 0, "status": "complete", "host": "node7"},
            {"id": 1, "status": "failed", "host": "node8"},
        ],
        "callbacks": [
            {
                "id": 4,
                "triggers": "failed-job-self",
                "language": "python",
                "code": "pass",
                "count": 2,
            }
        ],
        "todo": 3,
        "todotally": {"complete": 1, "failed": 1, "killed": 1},
        "shot": "sq010",
    }


@pytest.mark.parametrize("unset", [0, QB_TIME_EPOCH_OFFSET, None])
def test_an_unset_time_is_held_as_unset_and_reads_qube_time_0(
    sup: ReferenceSupervisor, unset: int | None
) -> None:
    # jobinfo of a job that never ran, from Qube's client (946702800) or another (0).
    job = {**ended_job(), "status": "pending", "timestart": unset, "timecomplete": unset}
    job["agenda"] = [{"name": "1"}]
    job["subjobs"] = [{"id": 0, "status": "pending"}]
    held = sup.hold_as_given(job)
    assert (held["timestart"], held["timecomplete"]) == (QB_TIME_EPOCH_OFFSET,) * 2

    sup.start_work(12, "1")  # it starts now, as a job that never ran does
    sup.complete_work(12, "1")
    ran = sup.job(12)
    assert QB_TIME_EPOCH_OFFSET < ran["timestart"] <= ran["timecomplete"]


def test_an_ended_job_is_held_with_its_id_statuses_and_history_of_work(
    sup: ReferenceSupervisor, events: list[Transition]
) -> None:
    held = sup.hold_as_given(ended_job())
    assert held == sup.job(12, include_callbacks=True)
    assert (held["id"], held["status"], held["label"], held["pgrp"]) == (
        12,
        "failed",
        "lighting",
        10,
    )
    assert (held["timesubmit"], held["timestart"], held["timecomplete"]) == (1000, 1010, 1100)
    assert [
        (w["name"], w["status"], w["subid"], w["host"], w["count"]) for w in held["agenda"]
    ] == [
        ("1", "complete", 0, "node7", 1),
        ("2", "failed", 1, "node8", 3),
        ("3", "killed", -1, "", 0),
    ]
    assert held["agenda"][0]["resultpackage"] == {"outputPaths": "/out/1.exr"}
    assert held["subjobs"] == [
        {"id": 0, "status": "complete", "host": "node7"},
        {"id": 1, "status": "failed", "host": "node8"},
    ]
    (callback,) = held["callbacks"]
    assert (callback["id"], callback["count"], callback["user"]) == (4, 2, "alice")
    assert held["shot"] == "sq010"
    assert "todotally" not in held, "jobinfo's tallies are made from the items, never held"
    assert events == [], "nothing happened to the job: no event, no registration"
    assert sup.results(12) == [] and sup.job_ids() == [12]


def test_a_job_without_id_or_status_is_a_pending_job_1() -> None:
    with ReferenceSupervisor(":memory:") as sup:
        held = sup.hold_as_given({"name": "x", "agenda": ["a", 2], "cpus": 2})
    assert (held["id"], held["status"], held["pgrp"], held["label"]) == (1, "pending", 1, "qube0")
    assert [(w["name"], w["status"], w["subid"]) for w in held["agenda"]] == [
        ("a", "pending", -1),
        ("2", "pending", -1),
    ]
    assert [sub["status"] for sub in held["subjobs"]] == ["pending", "pending"]


def test_a_job_held_again_under_its_id_replaces_the_first(sup: ReferenceSupervisor) -> None:
    sup.hold_as_given(ended_job())
    again = sup.hold_as_given({**ended_job(), "status": "complete", "agenda": ["9"]})
    assert again["status"] == "complete"
    assert [w["name"] for w in again["agenda"]] == ["9"]
    assert sup.job_ids() == [12]
    assert "in place of the job held under its id" in sup.history(12)[-1]["text"]


def test_a_submission_after_it_takes_the_next_id(sup: ReferenceSupervisor) -> None:
    sup.hold_as_given(ended_job())
    (job,) = sup.submit([{"name": "next"}])
    assert job["id"] == 13


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"status": "dying"},
            "job 12: status must be one of pending, blocked, running, waiting, suspended, "
            "complete, failed, killed; got 'dying'",
        ),
        (
            {"agenda": [{"name": "1", "status": "done"}]},
            "job 12, work 1: status must be one of",
        ),
        ({"agenda": ["1", "1"]}, "job 12: work name '1' appears twice in the agenda"),
        ({"id": "twelve"}, "the job: id must be an integer >= 1, got 'twelve'"),
        ({"user": "bob\n"}, "job 12: user 'bob\\n' is not a user name"),
        (
            {"agenda": [{"name": "1", "resultpackage": ["x"]}]},
            "job 12, work 1: resultpackage must be a dict",
        ),
        (
            {"subjobs": [{"id": 0}, {"id": 0}]},
            "job 12, subjobs[1]: instance id 0 appears twice in subjobs",
        ),
        (
            {"callbacks": [{"triggers": "done-job-self"}, {"id": 1, "triggers": "done-job-self"}]},
            "job 12, callback 2: id 1 is another callback's",
        ),
        ({"callbacks": [{"code": "pass"}]}, "job 12, callback 1: triggers is required"),
        ({"dependency": "link-done-job-self"}, "job 12: dependency item 'link-done-job-self'"),
        # JSON can spell a lone surrogate; SQLite refused it with a UnicodeEncodeError.
        ({"name": "a\ud800b"}, "job 12: name is not UTF-8 text: 'utf-8' codec can't encode"),
        (
            {"agenda": [{"name": "1", "host": "node\udc07"}]},
            "job 12: agenda[0].host is not UTF-8 text: ",
        ),
    ],
)
def test_malformed_fields_are_refused_by_name(
    sup: ReferenceSupervisor, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(SubmitError) as refused:
        sup.hold_as_given({**ended_job(), **change})
    assert str(refused.value).startswith(message), refused.value
    assert sup.job_ids() == []


def test_the_executors_checks_refuse_a_trigger_or_language(sup: ReferenceSupervisor) -> None:
    def no_jb(trigger: str | list[str]) -> str | None:
        return "unknown event type 'jb'" if "jb" in str(trigger) else None

    callback = {"triggers": "complete-jb-self", "language": "python"}
    with pytest.raises(SubmitError, match=r"job 12, callback 1: triggers: unknown event type"):
        sup.hold_as_given({**ended_job(), "callbacks": [callback]}, check_trigger=no_jb)
    with pytest.raises(SubmitError, match=r"job 12, callback 1: language: no ruby"):
        sup.hold_as_given(
            {**ended_job(), "callbacks": [{"triggers": "done-job-self", "language": "ruby"}]},
            check_language=lambda language: f"no {language}",
        )


def test_a_label_another_job_of_the_pgrp_holds_is_refused(sup: ReferenceSupervisor) -> None:
    sup.hold_as_given(ended_job())
    with pytest.raises(SubmitError) as refused:
        sup.hold_as_given({**ended_job(), "id": 13})
    assert str(refused.value) == (
        "job 13: label 'lighting' is taken by job 12 (pgrp 10); a label names one job of its "
        "process group"
    )
