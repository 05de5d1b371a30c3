"""ReferenceSupervisor on SQLite: submission, verbs, work lifecycle, events, history, results."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor_client.reference import (
    NoSuchJobError,
    NoSuchWorkError,
    PermissionDeniedError,
    ReferenceSupervisor,
    SubmitError,
    Transition,
)
from supervisor_client.reference import store as reference_store
from supervisor_client.reference.qube_time import QB_TIME_EPOCH_OFFSET
from supervisor_client.reference.states import (
    JOB_RULES,
    PUBLISHED_EVENTS,
    SUBJOB_RULES,
    WORK_RULES,
    event_name,
)
from tests.helpers.clock import Clock

pytestmark = pytest.mark.unit


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> list[Transition]:
    return []


@pytest.fixture
def sup(clock: Clock, events: list[Transition]) -> Iterator[ReferenceSupervisor]:
    with ReferenceSupervisor(":memory:", listeners=[events.append], clock=clock) as supervisor:
        yield supervisor


def submit_one(sup: ReferenceSupervisor, **fields: Any) -> int:
    (job,) = sup.submit([{"name": "render", "user": "alice", **fields}])
    return int(job["id"])


def statuses(sup: ReferenceSupervisor, job_id: int) -> dict[str, str]:
    return {work["name"]: work["status"] for work in sup.job(job_id)["agenda"]}


# -- submission ---------------------------------------------------------------------------


def test_submit_fills_qube_defaults(sup: ReferenceSupervisor, clock: Clock) -> None:
    (job,) = sup.submit([{"name": "comp"}])

    assert job == {
        "id": 1,
        "name": "comp",
        "label": "qube0",
        "pgrp": 1,
        "pid": 0,
        "status": "pending",
        "user": "qube",
        "priority": 9999,
        "prototype": "cmdline",
        "cpus": 1,
        "mailaddress": "",
        "timesubmit": int(clock.now),
        # Unset times read Qube's time 0 in Unix seconds, as Qube's client gives them.
        "timestart": QB_TIME_EPOCH_OFFSET,
        "timecomplete": QB_TIME_EPOCH_OFFSET,
        "agenda": [],
        "subjobs": [{"id": 0, "status": "pending", "host": ""}],
    }
    assert sup.job(1) == job


def test_one_submission_is_one_pgrp_led_by_its_first_job(sup: ReferenceSupervisor) -> None:
    first = sup.submit([{"name": "a"}, {"name": "b", "label": "comp"}, {"name": "c"}])
    second = sup.submit([{"name": "d"}])

    assert [(j["id"], j["pgrp"], j["label"]) for j in first] == [
        (1, 1, "qube0"),
        (2, 1, "comp"),
        (3, 1, "qube2"),
    ]
    assert [(j["id"], j["pgrp"], j["label"]) for j in second] == [(4, 4, "qube0")]
    assert [j["id"] for j in sup.jobs_in_pgrp(1)] == [1, 2, 3]
    assert sup.find_by_label(1, "comp") == sup.job(2)
    assert sup.find_by_label(4, "comp") is None


def test_a_job_can_join_an_existing_pgrp(sup: ReferenceSupervisor) -> None:
    sup.submit([{"name": "a"}, {"name": "b"}])
    (joined,) = sup.submit([{"name": "late", "pgrp": 1}])

    assert (joined["pgrp"], joined["label"]) == (1, "qube2")
    with pytest.raises(SubmitError, match=r"^job 2 of the submission: pgrp 77 does not exist$"):
        sup.submit([{"name": "x"}, {"name": "y", "pgrp": 77}])


def test_auto_labels_never_take_an_explicit_label(sup: ReferenceSupervisor) -> None:
    jobs = sup.submit([{"name": "a"}, {"name": "b"}, {"name": "c", "label": "qube1"}])

    assert [j["label"] for j in jobs] == ["qube0", "qube2", "qube1"]


def test_a_resubmitted_dict_gets_a_fresh_label_for_the_one_the_supervisor_gave(
    sup: ReferenceSupervisor,
) -> None:
    # Before: "label 'qube0' is taken by job 1 (pgrp 1)", for a dict read back unchanged.
    sup.submit([{"name": "a"}, {"name": "b", "label": "mine"}])
    auto, mine = (sup.job(job_id) for job_id in (1, 2))
    del auto["id"], mine["id"]

    (again,) = sup.submit([auto])
    assert (again["pgrp"], again["label"]) == (1, "qube2")
    (in_a_new_pgrp,) = sup.submit([{**auto, "pgrp": None}])
    assert in_a_new_pgrp["label"] == "qube0"
    # A label its submitter gave is theirs: it still names one job of its pgrp.
    with pytest.raises(SubmitError, match=r"^job 1 of the submission: label 'mine' is taken"):
        sup.submit([mine])
    (named,) = sup.submit([{"name": "c", "label": "qube7", "pgrp": 1}])
    with pytest.raises(SubmitError, match=r"label 'qube7' is taken by job 5 \(pgrp 1\)"):
        sup.submit([{**sup.job(int(named["id"])), "id": None}])


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        # A new pgrp has no id yet: the jobs that clash are named, not the pgrp.
        (
            [[{"label": "comp"}, {"label": "comp"}]],
            "^job 3 of the submission: label 'comp' is taken by job 2 of the submission; "
            "a label names one job of its process group$",
        ),
        (
            [[{"label": "comp"}], [{"label": "comp", "pgrp": 1}]],
            r"^job 2 of the submission: label 'comp' is taken by job 1 \(pgrp 1\);",
        ),
        ([[{"agenda": [1, "1"]}]], "work name '1' appears twice"),
    ],
    ids=["same-submission", "existing-pgrp", "work-names"],
)
def test_duplicates_reject_the_whole_submission(
    sup: ReferenceSupervisor, batches: list[list[dict[str, Any]]], message: str
) -> None:
    *accepted, rejected = batches
    for batch in accepted:
        sup.submit(batch)
    before = [sup.jobs_in_pgrp(1)]

    with pytest.raises(SubmitError, match=message):
        sup.submit([{"name": "ok"}, *rejected])

    assert [sup.jobs_in_pgrp(1)] == before


def test_rejected_submission_consumes_no_ids(sup: ReferenceSupervisor) -> None:
    with pytest.raises(SubmitError):
        sup.submit([{"label": "x"}, {"label": "x"}])

    assert sup.submit([{"name": "next"}])[0]["id"] == 1


@pytest.mark.parametrize(
    ("job", "message"),
    [
        # Any state a job dict read back shows is taken (it starts pending); "done" is none.
        ({"status": "done"}, "status must be 'pending' or 'blocked'"),
        ({"cpus": 0}, "cpus must be an integer >= 1"),
        ({"cpus": 10**6}, "cpus = 1000000 is above the limit"),
        ({"priority": "high"}, "priority must be an integer"),
        (
            {"user": "alice", "callbacks": [{"triggers": "x", "language": "qube", "user": "bob"}]},
            "callback 1: user 'bob' is not the job's owner 'alice'",
        ),
        ({"priority": 10**30}, f"priority = {10**30} is above the largest allowed, 2147483647"),
        ({"pid": 2**63}, f"pid = {2**63} is above the largest allowed, {2**63 - 1}"),
        (
            {"callbacks": [{"triggers": "x", "language": "qube", "maximum": 2**64}]},
            "maximum = 18446744073709551616 is above the largest allowed, 4294967295",
        ),
        ({"user": 5}, "user must be a string"),
        ({"agenda": "1-10"}, "agenda must be a list"),
        ({"agenda": [{"status": "blocked"}]}, "a work item needs a name"),
        ({"agenda": [{"name": "1", "status": "dying"}]}, "work 1: status must be"),
        ({"callbacks": [{"language": "python"}]}, "callback 1: triggers is required"),
        (
            {"callbacks": [{"triggers": {"done-job-self": 1}, "language": "qube"}]},
            "callback 1: triggers must be a string or a list of strings",
        ),
        (
            {"callbacks": [{"triggers": ["done-job-self", None], "language": "qube"}]},
            r"callback 1: triggers\[1\] must be a string, got None",
        ),
        ({"package": {"x": float("nan")}}, r"fields \['package'\] are not JSON values"),
        # JSON can spell a lone surrogate; SQLite refused it with a UnicodeEncodeError.
        (
            {"callbacks": [{"triggers": "done-job-self", "language": "qube", "code": "\ud800"}]},
            r"^job 1 of the submission: callbacks\[0\]\.code is not UTF-8 text: .* surrogates",
        ),
        ({"package": {"out\udcff": 1}}, "package has a field name that is not UTF-8 text"),
        ({"package": object()}, "are not JSON values"),
    ],
)
def test_malformed_jobs_are_rejected_naming_the_field(
    sup: ReferenceSupervisor, job: dict[str, Any], message: str
) -> None:
    with pytest.raises(SubmitError, match=message):
        sup.submit([job])


def test_a_list_valued_trigger_is_stored_as_the_or_of_its_items(sup: ReferenceSupervisor) -> None:
    items = ["done-job-self", "complete-work-self-1 && complete-work-self-2"]
    job_id = submit_one(sup, callbacks=[{"triggers": items, "language": "qube", "code": "x"}])
    (callback,) = sup.job(job_id, include_callbacks=True)["callbacks"]
    assert callback["triggers"] == "done-job-self || complete-work-self-1 && complete-work-self-2"


def test_a_trigger_check_refuses_the_submission_naming_job_and_callback(
    sup: ReferenceSupervisor,
) -> None:
    checked: list[str | list[str]] = []

    def check(expression: str | list[str]) -> str | None:
        checked.append(expression)
        return "no 'x' here" if "x" in expression else None

    good = {"triggers": "done-job-self", "language": "qube"}
    jobs: list[dict[str, Any]] = [
        {"callbacks": [good]},
        {"callbacks": [good, {**good, "triggers": ["a", "x"]}]},
    ]
    with pytest.raises(SubmitError, match=r"^job 2 of the submission, callback 2: triggers\[1\]: "):
        sup.submit(jobs, check_trigger=check)
    assert sup.job_ids() == []
    assert checked == ["done-job-self", "done-job-self", "a", "x"]
    # Without a check (the supervisor alone knows no grammar) triggers are stored as given.
    assert len(sup.submit(jobs)) == 2


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        (
            [
                {
                    "name": "u",
                    "user": "alice",
                    "callbacks": [{"triggers": "done-job-self", "user": "bob"}],
                }
            ],
            "job 1 of the submission, callback 1: user 'bob' is not the job's owner 'alice'",
        ),
        (
            [{"name": "ok"}, {"name": "x", "dependency": "link-complete-subjob-1"}],
            "job 2 of the submission: dependency item 'link-complete-subjob-1'",
        ),
        ([{"name": "ok"}, "not a job"], "job 2 of the submission must be a dict"),
        (
            [{"label": "a"}, {"label": "a"}],
            "job 2 of the submission: label 'a' is taken by job 1 of",
        ),
    ],
    ids=["callback", "dependency", "not-a-dict", "label"],
)
def test_a_refusal_counts_the_submissions_jobs_from_1_as_their_callbacks(
    sup: ReferenceSupervisor, jobs: list[Any], message: str
) -> None:
    # "job 0" read as a job id no job has, beside "callback 1" counted from 1.
    with pytest.raises(SubmitError) as refused:
        sup.submit(jobs)
    assert str(refused.value).startswith(message), refused.value


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (
            {"dependency": "99999999999999999999"},
            "dependency item '99999999999999999999': job id 99999999999999999999 is out of range",
        ),
        (
            {"dependency": "link-failed-job-99999999999999999999"},
            "dependency item 'link-failed-job-99999999999999999999': job id 99999999999999999999",
        ),
        (
            {"waitfor": [1, 99999999999999999999]},
            "waitfor item 99999999999999999999: job id 99999999999999999999 is out of range",
        ),
    ],
    ids=["id", "link", "waitfor"],
)
def test_an_out_of_range_dependency_id_names_the_field_as_written(
    sup: ReferenceSupervisor, field: dict[str, Any], message: str
) -> None:
    """Once "callback 1: triggers: ... at column 14", of the trigger made from it."""
    with pytest.raises(SubmitError) as refused:
        sup.submit([{"name": "a"}, {"name": "b", **field}])
    assert str(refused.value).startswith(f"job 2 of the submission: {message}"), refused.value


def test_a_resubmitted_dict_gets_its_dependency_made_again_and_keeps_its_own_callbacks(
    sup: ReferenceSupervisor,
) -> None:
    own = [
        {"triggers": "complete-job-self", "code": "mail-status"},
        # The form a dependency makes, but twice allowed: the job's own, not its dependency's.
        {"triggers": "complete-job-7", "code": "unblock-self", "maximum": 2, "mode": "level"},
    ]
    (first,) = sup.submit([{"name": "b", "dependency": "7", "waitfor": 8, "callbacks": own}])
    read_back = sup.job(int(first["id"]), include_callbacks=True)
    del read_back["id"]
    (again,) = sup.submit([{**read_back, "label": "b2", "dependency": "9"}])

    stored = sup.job(int(again["id"]), include_callbacks=True)["callbacks"]
    assert [(cb["triggers"], cb["code"], cb["maximum"]) for cb in stored] == [
        ("complete-job-self", "mail-status", 0),
        ("complete-job-7", "unblock-self", 2),
        ("complete-job-9 && done-job-8", "unblock-self", 1),
    ]


def test_a_hand_written_dependency_callback_stays_in_a_job_without_the_attributes(
    sup: ReferenceSupervisor,
) -> None:
    # Only a dict that says its dependency has the callbacks made from it made again.
    written = {"triggers": "complete-job-7", "code": "unblock-self", "maximum": 1, "mode": "level"}
    job_id = submit_one(sup, status="blocked", callbacks=[written])
    (stored,) = sup.job(job_id, include_callbacks=True)["callbacks"]
    assert (stored["triggers"], stored["code"]) == ("complete-job-7", "unblock-self")


def test_submit_needs_a_list(sup: ReferenceSupervisor) -> None:
    with pytest.raises(SubmitError, match="submit takes a list of job dicts"):
        sup.submit({"name": "a"})  # type: ignore[arg-type]


def test_agenda_forms_and_blocked_jobs(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(
        sup,
        status="blocked",
        cpus=3,
        agenda=[1, "2", {"name": "Initialize"}, {"name": 4, "status": "blocked"}],
    )
    job = sup.job(job_id)

    assert job["status"] == "blocked"
    assert statuses(sup, job_id) == {
        "1": "pending",
        "2": "pending",
        "Initialize": "pending",
        "4": "blocked",
    }
    assert job["agenda"][0] == {
        "name": "1",
        "status": "pending",
        "subid": -1,
        "host": "",
        "count": 0,
        "resultpackage": {},
    }
    assert job["subjobs"] == [{"id": n, "status": "blocked", "host": ""} for n in range(3)]


def test_a_read_of_named_work_holds_only_those_items_in_agenda_order(
    sup: ReferenceSupervisor,
) -> None:
    callbacks = [{"triggers": "done-job-self", "language": "qube", "code": "unblock-self"}]
    agenda = [*(str(n) for n in range(1, 1_201)), "1-10", "Initialize"]
    job_id = submit_one(sup, cpus=2, agenda=agenda, callbacks=callbacks)
    whole = sup.job(job_id, include_callbacks=True)
    by_name = {work["name"]: work for work in whole["agenda"]}

    named = sup.job(
        job_id, include_callbacks=True, work_names=["Initialize", "7", "missing", "7", "1-10"]
    )
    assert named["agenda"] == [by_name["7"], by_name["1-10"], by_name["Initialize"]]
    # Past one IN list's worth of names (500 a query), still each once, in agenda order.
    many = [str(n) for n in range(1_200, 0, -1)]
    assert sup.job(job_id, work_names=many)["agenda"] == whole["agenda"][:1_200]
    # No names: no item. Everything else is as a whole read's.
    none = sup.job(job_id, include_callbacks=True, work_names=[])
    assert none["agenda"] == []
    assert {**none, "agenda": whole["agenda"]} == whole
    assert {**named, "agenda": whole["agenda"]} == whole
    (in_pgrp,) = sup.jobs_in_pgrp(whole["pgrp"], work_names=["3"])
    assert in_pgrp["agenda"] == [by_name["3"]]
    assert sup.jobs_in_pgrp(whole["pgrp"], work_names=[])[0]["subjobs"] == whole["subjobs"]


def test_callbacks_are_numbered_and_only_shown_when_asked(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(
        sup,
        callbacks=[
            {"triggers": "complete-job-self", "language": "python", "code": "print(1)", "id": 99},
            {
                "triggers": "done-work-self-*",
                "language": "qube",
                "code": "unblock-self",
                "user": "alice",
                "maximum": 2,
            },
        ],
    )

    assert "callbacks" not in sup.job(job_id)
    assert sup.job(job_id, include_callbacks=True)["callbacks"] == [
        {
            "id": 1,
            "triggers": "complete-job-self",
            "language": "python",
            "code": "print(1)",
            "user": "alice",
            "count": 0,
            "maximum": 0,
        },
        {
            "id": 2,
            "triggers": "done-work-self-*",
            "language": "qube",
            "code": "unblock-self",
            "user": "alice",
            "count": 0,
            "maximum": 2,
        },
    ]


def test_a_callbacks_trigger_mode_is_kept_for_the_trigger_engine(
    sup: ReferenceSupervisor,
) -> None:
    job_id = submit_one(
        sup,
        callbacks=[
            {"triggers": "complete-job-7", "language": "qube", "code": "unblock-self"},
            {"triggers": "complete-job-7", "language": "qube", "code": "x", "mode": "level"},
        ],
    )
    plain, level = sup.job(job_id, include_callbacks=True)["callbacks"]
    assert "mode" not in plain
    assert level["mode"] == "level"
    with pytest.raises(SubmitError, match="mode must be 'edge' or 'level', got 'levle'"):
        submit_one(sup, callbacks=[{"triggers": "t", "language": "qube", "mode": "levle"}])


def test_other_fields_round_trip_and_assigned_ones_are_ignored(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(
        sup,
        package={"cmdline": "echo", "range": "1-10"},
        notes="n",
        cluster="/farm",
        id=555,
        timesubmit=1,
        subjobs=[{"id": 9}],
        mailaddress="a@b",
        pid=7,
        priority=10,
    )
    job = sup.job(job_id)

    assert job["package"] == {"cmdline": "echo", "range": "1-10"}
    assert (job["notes"], job["cluster"], job["mailaddress"]) == ("n", "/farm", "a@b")
    assert (job["id"], job["pid"], job["priority"]) == (1, 7, 10)
    assert job["timesubmit"] != 1
    assert job["subjobs"] == [{"id": 0, "status": "pending", "host": ""}]


def test_submit_emits_one_submit_event_per_job(
    sup: ReferenceSupervisor, events: list[Transition]
) -> None:
    sup.submit([{"name": "a"}, {"name": "b"}])

    assert events == [Transition("submit", "job", 1), Transition("submit", "job", 2)]


# -- job verbs ----------------------------------------------------------------------------


def test_unblock_blocked_job(sup: ReferenceSupervisor, events: list[Transition]) -> None:
    job_id = submit_one(sup, status="blocked", cpus=2)
    events.clear()

    result = sup.job_action("unblock", job_id, "alice")

    assert (result.changed, result.message) == (1, "job 1 blocked -> pending")
    assert sup.job(job_id)["status"] == "pending"
    assert [s["status"] for s in sup.job(job_id)["subjobs"]] == ["pending", "pending"]
    assert events == []  # Qube has no "pending" event


def test_a_verb_that_does_not_apply_changes_nothing_and_says_why(
    sup: ReferenceSupervisor, events: list[Transition]
) -> None:
    job_id = submit_one(sup)
    events.clear()

    result = sup.job_action("unblock", job_id, "alice")

    assert (result.changed, result.message) == (
        0,
        "job 1 is pending; unblock applies to blocked jobs",
    )
    assert sup.job(job_id)["status"] == "pending"
    assert events == []


def test_kill_running_job_kills_running_work_only(
    sup: ReferenceSupervisor, events: list[Transition], clock: Clock
) -> None:
    job_id = submit_one(sup, agenda=[1, 2, 3])
    sup.start_work(job_id, "1", host="node7")
    events.clear()
    clock.now += 60

    result = sup.job_action("kill", job_id, "alice")

    assert result.message == "job 1 running -> killed (1 work item moved with it)"
    assert statuses(sup, job_id) == {"1": "killed", "2": "pending", "3": "pending"}
    assert sup.job(job_id)["timecomplete"] == int(clock.now)
    assert events == [
        Transition("killed", "job", job_id),
        Transition("killed", "subjob", job_id, subjob_id=0, host="node7"),
        Transition("killed", "work", job_id, work_name="1", subjob_id=0, host="node7"),
    ]


def test_retry_runs_every_ended_item_again(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=[1, 2, 3, 4])
    for name, end in (("1", sup.complete_work), ("2", sup.fail_work)):
        sup.start_work(job_id, name)
        end(job_id, name)
    sup.start_work(job_id, "3")
    sup.work_action("kill", job_id, ["3"], "alice")
    sup.start_work(job_id, "4")
    sup.complete_work(job_id, "4")
    assert sup.job(job_id)["status"] == "failed"

    result = sup.job_action("retry", job_id, "alice")

    assert result.message == "job 1 failed -> pending (4 work items moved with it)"
    assert statuses(sup, job_id) == dict.fromkeys("1234", "pending")
    assert sup.job(job_id)["timecomplete"] == QB_TIME_EPOCH_OFFSET  # unset again


def test_a_retried_complete_job_runs_and_ends_again(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=[1, 2])
    for name in ("1", "2"):
        sup.start_work(job_id, name)
        sup.complete_work(job_id, name)
    assert sup.job(job_id)["status"] == "complete"

    result = sup.job_action("retry", job_id, "alice")

    assert result.message == "job 1 complete -> pending (2 work items moved with it)"
    assert statuses(sup, job_id) == {"1": "pending", "2": "pending"}
    for name in ("1", "2"):
        sup.start_work(job_id, name)
        sup.complete_work(job_id, name)
    assert sup.job(job_id)["status"] == "complete"


def test_requeue_holds_the_job_with_its_work_ready(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=[1])
    sup.start_work(job_id, "1")
    sup.fail_work(job_id, "1")

    sup.job_action("requeue", job_id, "alice")

    assert sup.job(job_id)["status"] == "blocked"
    assert statuses(sup, job_id) == {"1": "pending"}


def test_requeue_of_a_complete_job_holds_its_work_ready(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=[1])
    sup.start_work(job_id, "1")
    sup.complete_work(job_id, "1")

    sup.job_action("requeue", job_id, "alice")
    sup.job_action("unblock", job_id, "alice")

    assert sup.job(job_id)["status"] == "pending"
    assert statuses(sup, job_id) == {"1": "pending"}


@pytest.mark.parametrize("verb", ["interrupt", "migrate"])
def test_interrupt_and_migrate_send_running_work_back_at_once(
    sup: ReferenceSupervisor, events: list[Transition], verb: str
) -> None:
    job_id = submit_one(sup, agenda=[1, 2])
    sup.start_work(job_id, "1")
    events.clear()

    assert sup.job_action(verb, job_id, "alice").changed == 1

    assert sup.job(job_id)["status"] == "pending"
    assert statuses(sup, job_id) == {"1": "pending", "2": "pending"}
    assert events == []


def test_preempt_lets_the_running_frame_finish_then_the_job_goes_pending(
    sup: ReferenceSupervisor, events: list[Transition]
) -> None:
    # qube-callbacks.md §5.2: "preempt: -> pending after the current agenda item completes".
    job_id = submit_one(sup, agenda=[1, 2])
    sup.start_work(job_id, "1")
    events.clear()

    result = sup.job_action("preempt", job_id, "alice")

    assert result.changed == 1
    assert result.message == (
        f"job {job_id} preempted: it stays running until work {job_id}:1 ends, "
        "then goes pending; it takes no new work"
    )
    assert sup.job(job_id)["status"] == "running"
    assert statuses(sup, job_id) == {"1": "running", "2": "pending"}
    assert events == []
    assert sup.preempted_job_ids() == {job_id}
    again = sup.job_action("preempt", job_id, "alice")
    assert again.changed == 0
    assert (
        again.message
        == f"job {job_id} is already preempted: it goes pending once work {job_id}:1 ends"
    )
    with pytest.raises(ValueError, match=f"job {job_id} is preempted: it takes no new work"):
        sup.start_work(job_id, "2")

    sup.complete_work(job_id, "1")

    job = sup.job(job_id)
    assert job["status"] == "pending"
    assert statuses(sup, job_id) == {"1": "complete", "2": "pending"}
    assert [sub["status"] for sub in job["subjobs"]] == ["pending"]
    # The frame's own event only: Qube fires none for pending.
    assert events == [
        Transition("complete", "work", job_id, work_name="1", subjob_id=0, host="localhost")
    ]
    assert sup.preempted_job_ids() == set()
    history = [line["text"] for line in sup.history(job_id)]
    assert "[job] running -> pending (preempted: its running work ended)" in history
    sup.start_work(job_id, "2")  # dispatched again, as any pending job
    assert sup.job(job_id)["status"] == "running"


def test_preempt_of_an_instance_lets_its_frame_finish_then_it_goes_pending(
    sup: ReferenceSupervisor, events: list[Transition]
) -> None:
    # It read pending at once while its frame ran (probe 54): Qube's preempt is
    # "pending after the current agenda item completes", for an instance as for a job.
    job_id = submit_one(sup, agenda=["1", "2", "3"], cpus=2)
    sup.start_work(job_id, "1", subid=0)
    sup.start_work(job_id, "2", subid=1)
    events.clear()

    result = sup.subjob_action("preempt", job_id, [0], "alice")

    assert (result.changed, result.message) == (
        1,
        "instance 1.0 preempted: it stays running until work 1:1 ends, then goes pending; "
        "it takes no new work",
    )
    assert [s["status"] for s in sup.job(job_id)["subjobs"]] == ["running", "running"]
    assert events == []
    with pytest.raises(ValueError, match=r"instance 1\.0 is preempted: it takes no new work"):
        sup.start_work(job_id, "3", subid=0)
    assert sup.subjob_action("preempt", job_id, [0], "alice").message == (
        "instance 1.0 is already preempted: it goes pending once work 1:1 ends"
    )

    sup.complete_work(job_id, "1")

    assert [s["status"] for s in sup.job(job_id)["subjobs"]] == ["pending", "running"]
    assert sup.job(job_id)["status"] == "running"  # its other instance runs on
    sup.start_work(job_id, "3", subid=0)  # dispatched again like any pending instance
    assert [s["status"] for s in sup.job(job_id)["subjobs"]] == ["running", "running"]


def test_another_verb_on_a_preempted_instance_ends_the_wait(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=["1", "2", "3"], cpus=2)
    sup.start_work(job_id, "1", subid=0)
    sup.start_work(job_id, "2", subid=1)  # the job runs on while instance 0 is changed
    sup.subjob_action("preempt", job_id, [0], "alice")

    sup.subjob_action("kill", job_id, [0], "alice")

    assert sup.job(job_id)["subjobs"][0]["status"] == "killed"
    sup.subjob_action("retry", job_id, [0], "alice")
    sup.start_work(job_id, "3", subid=0)  # no preempt left over


def test_preempt_releases_each_instance_as_its_frame_ends(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=[1, 2, 3], cpus=2)
    sup.start_work(job_id, "1", subid=0)
    sup.start_work(job_id, "2", subid=1)
    sup.job_action("preempt", job_id, "alice")

    sup.fail_work(job_id, "2")

    job = sup.job(job_id)
    assert job["status"] == "running"
    assert [sub["status"] for sub in job["subjobs"]] == ["running", "pending"]
    sup.complete_work(job_id, "1")
    job = sup.job(job_id)
    assert job["status"] == "pending"
    assert [sub["status"] for sub in job["subjobs"]] == ["pending", "pending"]
    assert statuses(sup, job_id) == {"1": "complete", "2": "failed", "3": "pending"}


def test_preempt_of_the_last_running_frame_lets_the_agenda_end_the_job(
    sup: ReferenceSupervisor,
) -> None:
    job_id = submit_one(sup, agenda=[1])
    sup.start_work(job_id, "1")
    sup.job_action("preempt", job_id, "alice")

    sup.complete_work(job_id, "1")

    assert sup.job(job_id)["status"] == "complete"
    assert sup.preempted_job_ids() == set()


def test_preempt_without_running_work_is_at_once_and_another_verb_cancels_it(
    sup: ReferenceSupervisor,
) -> None:
    idle = submit_one(sup)
    sup.start_job(idle)  # no agenda: no item to wait for
    assert sup.job_action("preempt", idle, "alice").message == f"job {idle} running -> pending"
    assert sup.job(idle)["status"] == "pending"

    job_id = submit_one(sup, agenda=[1, 2])
    sup.start_work(job_id, "1")
    sup.job_action("preempt", job_id, "alice")
    sup.job_action("block", job_id, "alice")  # a change of state ends the wait
    sup.job_action("unblock", job_id, "alice")
    assert sup.preempted_job_ids() == set()
    sup.start_work(job_id, "2")


def test_suspend_and_resume(sup: ReferenceSupervisor, events: list[Transition]) -> None:
    job_id = submit_one(sup)
    sup.start_job(job_id)
    events.clear()

    sup.job_action("suspend", job_id, "alice")
    assert sup.job(job_id)["status"] == "suspended"
    assert events == []
    assert sup.job_action("suspend", job_id, "alice").changed == 0
    sup.job_action("resume", job_id, "alice")

    assert sup.job(job_id)["status"] == "running"
    # A resume is not a start (Qube's running: "object has started running"): before,
    # running fired again, so a running-job-self -> suspend-self hold never let go.
    assert events == []


@pytest.mark.parametrize(
    ("verb", "status"), [("complete", "complete"), ("fail", "failed"), ("block", "blocked")]
)
def test_forcing_verbs(
    sup: ReferenceSupervisor, events: list[Transition], verb: str, status: str
) -> None:
    job_id = submit_one(sup)
    events.clear()

    sup.job_action(verb, job_id, "alice")

    assert sup.job(job_id)["status"] == status
    assert events[0] == Transition(status, "job", job_id)
    assert sup.job_action(verb, job_id, "alice").changed == 0


def test_fail_forces_a_complete_job_failed_leaving_its_frames_and_instances(
    sup: ReferenceSupervisor, events: list[Transition]
) -> None:
    # A check of the last frame runs once that frame has completed the job (probe 76).
    job_id = submit_one(sup, agenda=["1"])
    sup.start_work(job_id, "1")
    sup.complete_work(job_id, "1")
    events.clear()

    result = sup.job_action("fail", job_id, "alice")

    assert result.message == f"job {job_id} complete -> failed"
    assert events == [Transition("failed", "job", job_id)]
    shown = sup.job(job_id)
    assert (shown["status"], shown["agenda"][0]["status"]) == ("failed", "complete")
    assert [sub["status"] for sub in shown["subjobs"]] == ["complete"]
    assert sup.job_action("retry", job_id, "alice").changed == 1
    assert sup.job(job_id)["agenda"][0]["status"] == "pending"


def test_remove_deletes_the_job_but_keeps_its_history(
    sup: ReferenceSupervisor, events: list[Transition]
) -> None:
    job_id = submit_one(sup, agenda=[1], callbacks=[{"triggers": "x-job-self", "language": "qube"}])
    events.clear()

    assert sup.job_action("remove", job_id, "alice", invocation_id="inv-1").changed == 1

    with pytest.raises(NoSuchJobError, match="no job 1"):
        sup.job(job_id)
    assert events == [Transition("removed", "job", job_id)]
    assert sup.history(job_id)[-1]["text"] == "[callback] remove by alice: job 1 removed"
    assert sup.jobs_in_pgrp(1) == []


def test_unknown_job_and_unknown_verb(sup: ReferenceSupervisor) -> None:
    with pytest.raises(NoSuchJobError, match="no job 42"):
        sup.job_action("kill", 42, "alice")
    with pytest.raises(ValueError, match="unknown job verb 'explode'"):
        sup.job_action("explode", 42, "alice")


# -- permissions --------------------------------------------------------------------------


def test_only_owner_and_admins_may_act(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, user="bob", status="blocked")

    with pytest.raises(PermissionDeniedError, match=r"^alice may not unblock job 1 owned by bob$"):
        sup.job_action("unblock", job_id, "alice")
    with pytest.raises(PermissionDeniedError, match="an anonymous caller may not unblock"):
        sup.job_action("unblock", job_id, "")
    with pytest.raises(PermissionDeniedError):
        sup.work_action("kill", job_id, ["x"], "alice")
    assert sup.job(job_id)["status"] == "blocked"

    assert sup.job_action("unblock", job_id, "root").changed == 1


def test_the_mask_limits_owners_but_not_admins(clock: Clock) -> None:
    without_kill = 136314867 & ~16
    with ReferenceSupervisor(
        admins={"wrangler"}, default_security=without_kill, clock=clock
    ) as sup:
        job_id = submit_one(sup, agenda=[1])

        with pytest.raises(PermissionDeniedError, match="alice may not kill job 1 owned by alice"):
            sup.job_action("kill", job_id, "alice")
        with pytest.raises(PermissionDeniedError):
            sup.work_action("kill", job_id, ["1"], "alice")
        with pytest.raises(PermissionDeniedError):
            sup.job_action("kill", job_id, "root")  # not an admin of this supervisor
        assert sup.job_action("kill", job_id, "wrangler").changed == 1


# -- work verbs and the derived job status ------------------------------------------------


def test_workunblock_unblocks_exactly_the_named_items(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=[{"name": str(n), "status": "blocked"} for n in range(1, 6)])

    result = sup.work_action("unblock", job_id, ["2", "3", "4"], "alice")

    assert (result.changed, result.message) == (3, "work 1:2,3,4 -> pending")
    assert statuses(sup, job_id) == {
        "1": "blocked",
        "2": "pending",
        "3": "pending",
        "4": "pending",
        "5": "blocked",
    }


def test_a_work_verb_reads_the_rows_of_its_items_not_the_whole_agenda(
    sup: ReferenceSupervisor,
) -> None:
    """A frame-by-frame dependency unblocks 20,000 frames one call each: no call reads them all."""
    job_id = submit_one(
        sup, agenda=[{"name": str(n), "status": "blocked"} for n in range(1, 2_001)]
    )
    statements: list[str] = []
    sup._db.set_trace_callback(statements.append)

    moved = sup.work_action("unblock", job_id, ["5"], "alice")
    left = sup.work_action("unblock", job_id, ["5", "6"], "alice")
    sup.work_action("complete", job_id, [str(n) for n in range(1, 2_001)], "alice")

    sup._db.set_trace_callback(None)
    assert (moved.changed, left.changed) == (1, 1)
    assert sup.job(job_id)["status"] == "complete"  # the agenda's statuses still decide
    work_reads = [s for s in statements if s.startswith("SELECT * FROM work WHERE job_id")]
    assert work_reads
    assert all(" AND name IN (" in s for s in work_reads), work_reads


def test_work_verb_reports_items_it_left_alone(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=[1, {"name": "2", "status": "blocked"}])

    result = sup.work_action("unblock", job_id, ["1", "2"], "alice")

    assert result.changed == 1
    assert (
        result.message
        == "work 1:2 -> pending; work 1:1 is pending; unblock applies to blocked work"
    )


def test_unknown_work_names_are_all_named(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=[1])

    with pytest.raises(NoSuchWorkError, match="job 1 has no work item '7', '2-4'"):
        sup.work_action("block", job_id, ["1", "7", "2-4"], "alice")
    with pytest.raises(ValueError, match="needs at least one work name"):
        sup.work_action("block", job_id, [], "alice")
    assert statuses(sup, job_id) == {"1": "pending"}


@pytest.mark.parametrize(
    ("ends", "job_status"),
    [
        (("complete", "complete"), "complete"),
        (("complete", "fail"), "failed"),
        (("kill", "complete"), "killed"),
        (("kill", "fail"), "failed"),
    ],
)
def test_job_status_follows_its_work(
    sup: ReferenceSupervisor, events: list[Transition], ends: tuple[str, str], job_status: str
) -> None:
    job_id = submit_one(sup, agenda=["a", "b"])
    sup.start_work(job_id, "a")
    sup.work_action(ends[0], job_id, ["a"], "alice")
    assert sup.job(job_id)["status"] == "running"
    events.clear()

    sup.work_action(ends[1], job_id, ["b"], "alice")

    assert sup.job(job_id)["status"] == job_status
    assert events[0].type == "work"
    assert Transition(job_status, "job", job_id) in events
    assert "done" not in {event.name for event in events}


def test_retrying_work_of_an_ended_job_reopens_it(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, agenda=["a"])
    sup.work_action("complete", job_id, ["a"], "alice")
    assert sup.job(job_id)["status"] == "complete"

    sup.work_action("retry", job_id, ["a"], "alice")

    assert sup.job(job_id)["status"] == "pending"
    assert sup.job(job_id)["subjobs"][0]["status"] == "pending"


@pytest.mark.parametrize("ending", ["kill", "fail", "complete"])
def test_a_frame_of_an_ended_job_blocked_or_unblocked_does_not_run_it_again(
    sup: ReferenceSupervisor, events: list[Transition], ending: str
) -> None:
    # Qube: a killed job "must be retried/resubmitted to run again". It keeps its pending
    # and blocked frames; a dependency's release unblocking one made it pending and run
    # (probe 54), and its done-job-self fired a second time.
    job_id = submit_one(sup, agenda=["1", "2", "3"])
    sup.work_action("block", job_id, ["2", "3"], "alice")
    sup.job_action(ending, job_id, "alice")
    ended = sup.job(job_id)["status"]
    assert ended == {"kill": "killed", "fail": "failed", "complete": "complete"}[ending]
    events.clear()

    assert sup.work_action("unblock", job_id, ["2"], "alice").changed == 1
    assert sup.work_action("block", job_id, ["1"], "alice").changed == 1

    assert sup.job(job_id)["status"] == ended
    assert [e for e in events if e.type == "job"] == []
    with pytest.raises(ValueError, match=f"job {job_id} is {ended}"):
        sup.start_work(job_id, "2")
    sup.work_action("unblock", job_id, ["1"], "alice")
    sup.job_action("retry", job_id, "alice")  # as Qube: a retry runs it again
    assert sup.job(job_id)["status"] == "pending"


# -- instance verbs -----------------------------------------------------------------------


def test_subjob_verbs_act_on_the_named_instances_or_all(
    sup: ReferenceSupervisor, events: list[Transition]
) -> None:
    job_id = submit_one(sup, cpus=3, status="blocked")
    events.clear()

    one = sup.subjob_action("unblock", job_id, [1], "alice")
    rest = sup.subjob_action("unblock", job_id, [], "alice")

    assert (one.changed, one.message) == (1, "instance 1.1 blocked -> pending")
    assert rest.changed == 2
    assert "instance 1.1 is pending; unblock applies to blocked instances" in rest.message
    assert sup.job(job_id)["status"] == "blocked"  # instances do not move the job
    sup.subjob_action("kill", job_id, [2], "alice")
    assert events == [Transition("killed", "subjob", job_id, subjob_id=2)]
    with pytest.raises(NoSuchJobError, match="job 1 has no instance 5"):
        sup.subjob_action("kill", job_id, [5], "alice")
    with pytest.raises(ValueError, match="unknown subjob verb 'remove'"):
        sup.subjob_action("remove", job_id, [0], "alice")


# -- work lifecycle -----------------------------------------------------------------------


def test_start_work_runs_item_instance_and_job(
    sup: ReferenceSupervisor, events: list[Transition], clock: Clock
) -> None:
    job_id = submit_one(sup, agenda=[1, 2], cpus=2)
    events.clear()

    returned = sup.start_work(job_id, "2", host="node3", subid=1)

    assert (
        returned
        == events
        == [
            Transition("running", "job", job_id),
            Transition("running", "subjob", job_id, subjob_id=1, host="node3"),
            Transition("running", "work", job_id, work_name="2", subjob_id=1, host="node3"),
        ]
    )
    job = sup.job(job_id)
    assert job["agenda"][1] == {
        "name": "2",
        "status": "running",
        "subid": 1,
        "host": "node3",
        "count": 1,
        "resultpackage": {},
    }
    assert (job["status"], job["timestart"]) == ("running", int(clock.now))


def test_complete_work_keeps_the_result_package(sup: ReferenceSupervisor, clock: Clock) -> None:
    job_id = submit_one(sup, agenda=[1])
    sup.start_work(job_id, "1")
    clock.now += 5

    sup.complete_work(job_id, "1", {"outputPaths": "/out/1.exr"})

    job = sup.job(job_id)
    assert job["agenda"][0]["resultpackage"] == {"outputPaths": "/out/1.exr"}
    assert (job["status"], job["timecomplete"]) == ("complete", int(clock.now))
    assert job["subjobs"][0]["status"] == "complete"


@pytest.mark.parametrize(
    ("setup", "call", "error", "message"),
    [
        (
            {"status": "blocked", "agenda": [1]},
            lambda s: s.start_work(1, "1"),
            ValueError,
            "job 1 is blocked; work starts in pending or running jobs",
        ),
        (
            {"agenda": [{"name": "1", "status": "blocked"}]},
            lambda s: s.start_work(1, "1"),
            ValueError,
            "only pending work starts",
        ),
        ({"agenda": [1]}, lambda s: s.start_work(1, "1", subid=4), NoSuchJobError, "no instance 4"),
        ({"agenda": [1]}, lambda s: s.start_work(1, "9"), NoSuchWorkError, "no work item '9'"),
        ({"agenda": [1]}, lambda s: s.complete_work(1, "1"), ValueError, "only running work ends"),
        ({"agenda": [1]}, lambda s: s.start_job(1), ValueError, "has an agenda"),
        ({}, lambda s: s.complete_job(1), ValueError, "job 1 is pending; expected running"),
    ],
)
def test_lifecycle_refuses_what_a_worker_could_not_do(
    sup: ReferenceSupervisor, setup: dict[str, Any], call: Any, error: type[Exception], message: str
) -> None:
    submit_one(sup, **setup)

    with pytest.raises(error, match=message):
        call(sup)


@pytest.mark.parametrize(("end", "status"), [("complete_job", "complete"), ("fail_job", "failed")])
def test_jobs_without_agenda_are_driven_directly(
    sup: ReferenceSupervisor, events: list[Transition], end: str, status: str
) -> None:
    job_id = submit_one(sup)
    events.clear()

    sup.start_job(job_id, host="node1")
    getattr(sup, end)(job_id)

    assert events == [
        Transition("running", "job", job_id),
        Transition("running", "subjob", job_id, subjob_id=0, host="node1"),
        Transition(status, "job", job_id),
        Transition(status, "subjob", job_id, subjob_id=0, host="node1"),
    ]


# -- listeners and history ----------------------------------------------------------------


def test_listeners_run_after_commit_outside_the_lock(sup: ReferenceSupervisor) -> None:
    seen: list[tuple[str, str, bool]] = []

    def read_from_another_thread(transition: Transition) -> None:
        # The reader would block until the timeout if the store still held its lock.
        status: list[str] = []
        reader = threading.Thread(
            target=lambda: status.append(sup.job(transition.job_id)["status"])
        )
        reader.start()
        reader.join(timeout=5)
        seen.append((transition.type, status[0] if status else "", reader.is_alive()))

    job_id = submit_one(sup, status="blocked")
    sup.add_listener(read_from_another_thread)
    sup.job_action("kill", job_id, "alice")

    assert seen == [("job", "killed", False), ("subjob", "killed", False)]


def test_a_failing_listener_is_logged_and_the_next_still_called(
    sup: ReferenceSupervisor, events: list[Transition], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(transition: Transition) -> None:
        raise RuntimeError("listener bug")

    after: list[Transition] = []
    sup.add_listener(broken)
    sup.add_listener(after.append)

    with caplog.at_level(logging.ERROR):
        submit_one(sup)

    assert after == events == [Transition("submit", "job", 1)]
    assert "listener bug" in caplog.text


def test_history_records_who_did_what(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup, status="blocked")
    sup.job_action("unblock", job_id, "alice", invocation_id="inv-7")
    sup.job_action("block", job_id, "root")

    lines = sup.history(job_id)

    assert [line["text"] for line in lines] == [
        "[job] submitted by alice into pgrp 1 as 'qube0'",
        "[callback] unblock by alice: job 1 blocked -> pending",
        "[user] block by root: job 1 pending -> blocked",
    ]
    assert lines[1]["invocation_id"] == "inv-7"
    assert sup.history(999) == []


# -- results ------------------------------------------------------------------------------


def test_results_are_stored_once_per_invocation(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup)
    sup.job_action("remove", job_id, "alice")  # a callback may remove its own job

    assert sup.report_result("inv-1", job_id, {"outcome": "OUTCOME_SUCCEEDED"}) is False
    assert sup.report_result("inv-1", job_id, {"outcome": "OUTCOME_FAILED"}) is True
    assert sup.report_result("inv-2", 99, {}) is False

    assert sup.result("inv-1") is not None
    assert sup.result("inv-1")["payload"] == {"outcome": "OUTCOME_SUCCEEDED"}  # type: ignore[index]
    assert [r["invocation_id"] for r in sup.results(job_id)] == ["inv-1"]
    assert [r["invocation_id"] for r in sup.results()] == ["inv-1", "inv-2"]
    assert sup.result("nope") is None
    texts = [line["text"] for line in sup.history(job_id) if "result" in line["text"]]
    assert texts == ["[callback] result of invocation inv-1: OUTCOME_SUCCEEDED"]


def test_a_later_run_of_an_invocation_replaces_its_result_and_a_resend_changes_nothing(
    sup: ReferenceSupervisor,
) -> None:
    # A caller's resend after DEADLINE_EXCEEDED: the first run ended KILLED and was
    # reported, the resend ran to SUCCEEDED, which the executor's history keeps.
    job_id = submit_one(sup)
    killed = {"outcome": "OUTCOME_KILLED", "ended_at": 100.5}
    succeeded = {"outcome": "OUTCOME_SUCCEEDED", "ended_at": 102.25}

    assert sup.report_result("inv-1", job_id, killed) is False
    assert sup.report_result("inv-1", job_id, killed) is True  # resent after a crash
    assert sup.report_result("inv-1", job_id, succeeded) is False
    assert sup.report_result("inv-1", job_id, succeeded) is True
    assert sup.report_result("inv-1", job_id, killed) is True  # the earlier run's, late

    assert sup.result("inv-1")["payload"] == succeeded  # type: ignore[index]
    assert [r["invocation_id"] for r in sup.results(job_id)] == ["inv-1"]
    texts = [line["text"] for line in sup.history(job_id) if "result" in line["text"]]
    assert texts == [
        "[callback] result of invocation inv-1: OUTCOME_KILLED",
        "[callback] result of invocation inv-1: OUTCOME_SUCCEEDED"
        " (a later run; replaces OUTCOME_KILLED)",
    ]
    # In one batch as well, in its order.
    assert sup.report_results(
        [("inv-2", job_id, killed), ("inv-2", job_id, succeeded), ("inv-2", job_id, killed)]
    ) == [False, False, True]
    assert sup.result("inv-2")["payload"] == succeeded  # type: ignore[index]


def test_a_result_for_a_job_never_given_out_stays_out_of_the_job_later_given_its_id(
    sup: ReferenceSupervisor,
) -> None:
    # Before, a later job 2 listed this result in its history, ahead of its own
    # "submitted", and among its results.
    first = submit_one(sup)
    assert sup.report_result("early", first + 1, {"outcome": "OUTCOME_SUCCEEDED"}) is False
    assert sup.report_result("early", first + 1, {}) is True, "still once per invocation"
    assert sup.report_result("zero", 0, {"outcome": "OUTCOME_FAILED"}) is False
    assert sup.history(first + 1) == []

    later = submit_one(sup)

    assert later == first + 1
    assert [line["text"] for line in sup.history(later)] == [
        "[job] submitted by alice into pgrp 2 as 'qube0'"
    ]
    assert sup.results(later) == []
    kept = sup.result("early")
    assert kept is not None and kept["job_known"] is False and kept["job_id"] == later
    assert [r["invocation_id"] for r in sup.results()] == ["early", "zero"]
    sup.report_result("own", later, {"outcome": "OUTCOME_SUCCEEDED"})
    assert [r["invocation_id"] for r in sup.results(later)] == ["own"]
    assert (
        sup.history(later)[-1]["text"] == "[callback] result of invocation own: OUTCOME_SUCCEEDED"
    )


def test_an_older_database_gets_the_results_column(tmp_path: Path) -> None:
    path = tmp_path / "sup.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE results (invocation_id TEXT PRIMARY KEY, job_id INTEGER NOT NULL,"
            " time REAL NOT NULL, payload TEXT NOT NULL)"
        )
        db.execute("INSERT INTO results VALUES ('old', 1, 1.0, '{}')")
    db.close()
    with ReferenceSupervisor(path) as reopened:
        assert reopened.result("old") == {
            "invocation_id": "old",
            "job_id": 1,
            "time": 1.0,
            "payload": {},
            "job_known": True,
        }


def test_a_reported_run_counts_toward_its_callbacks_count(sup: ReferenceSupervisor) -> None:
    (job,) = sup.submit(
        [{"name": "c", "callbacks": [{"triggers": "complete-work-self-*", "language": "qube"}]}]
    )
    job_id = int(job["id"])

    def report(invocation_id: str, **callback: object) -> None:
        sup.report_result(invocation_id, job_id, {"outcome": "SUCCEEDED", "callback": callback})

    def count() -> int:
        return int(sup.job(job_id, include_callbacks=True)["callbacks"][0]["count"])

    report("a", id=1, count=2, triggers="complete-work-self-*")
    assert count() == 2
    report("b", id=1, count=1, triggers="complete-work-self-*")  # a late report: never down
    report("c", id=1, count=7, triggers="done-job-self")  # an ad hoc run with the same id
    report("d", id=2, count=9, triggers="complete-work-self-*")  # a universal callback's
    report("e", id="x", count=9)
    assert count() == 2


def test_results_need_an_id_and_json(sup: ReferenceSupervisor) -> None:
    with pytest.raises(ValueError, match="needs an invocation_id"):
        sup.report_result("", 1, {})
    with pytest.raises(ValueError, match="not JSON"):
        sup.report_result("x", 1, {"bad": object()})


def test_a_batch_of_results_is_stored_whole_or_not_at_all(sup: ReferenceSupervisor) -> None:
    job_id = submit_one(sup)
    sup.report_result("inv-1", job_id, {"outcome": "OUTCOME_SUCCEEDED"})

    with pytest.raises(ValueError, match="not JSON"):
        sup.report_results([("inv-2", job_id, {}), ("inv-3", job_id, {"bad": object()})])
    assert sup.result("inv-2") is None

    duplicates = sup.report_results(
        [("inv-1", job_id, {}), ("inv-2", job_id, {}), ("inv-2", job_id, {})]
    )
    assert duplicates == [True, False, True]
    assert [r["invocation_id"] for r in sup.results()] == ["inv-1", "inv-2"]


# -- storage ------------------------------------------------------------------------------


def test_state_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.db"
    with ReferenceSupervisor(path) as first:
        first.submit([{"name": "a", "user": "alice", "status": "blocked", "agenda": [1]}])
        first.job_action("unblock", 1, "alice")

    with ReferenceSupervisor(str(path)) as second:
        assert second.job(1)["status"] == "pending"
        assert second.submit([{"name": "b"}])[0]["id"] == 2


def test_concurrent_submissions_get_distinct_ids(sup: ReferenceSupervisor) -> None:
    ids: list[int] = []
    lock = threading.Lock()

    def submit_many() -> None:
        for _ in range(20):
            job_id = submit_one(sup, agenda=[1, 2])
            with lock:
                ids.append(job_id)

    threads = [threading.Thread(target=submit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(ids) == list(range(1, 81))
    assert all(sup.job(job_id)["pgrp"] == job_id for job_id in ids)


def test_ids_beyond_sqlites_integers_are_unknown_jobs_not_internal_errors(
    sup: ReferenceSupervisor,
) -> None:
    # The wire's ids are uint64; SQLite's integers stop at 2**63 - 1.
    for job_id in (2**63, 2**64 - 1):
        with pytest.raises(NoSuchJobError):
            sup.job(job_id)
        with pytest.raises(NoSuchJobError):
            sup.job_action("unblock", job_id, "")
        assert sup.jobs_in_pgrp(job_id) == []
        with pytest.raises(ValueError, match="out of range"):
            sup.report_result("big-id", job_id, {"outcome": "OUTCOME_SUCCEEDED"})


@pytest.mark.parametrize("mailaddress", ["ok@example.com\r\nBcc: evil@example.com", "a@b\x00"])
def test_a_mailaddress_with_control_characters_is_refused(
    sup: ReferenceSupervisor, mailaddress: str
) -> None:
    with pytest.raises(SubmitError, match=r"mailaddress .* holds a control character"):
        sup.submit([{"name": "j", "user": "bob", "mailaddress": mailaddress}])
    sup.submit([{"name": "j", "user": "bob", "mailaddress": "a@b.org,\tc d;e"}])


@pytest.mark.parametrize(
    ("mailaddress", "named"),
    [
        ("<a@b>", "'<a@b>'"),
        ("Bcc:", "'Bcc:'"),
        ("a@@b", "'a@@b'"),
        ("@", "'@'"),
        ("lead@x.org, Ann <ann@x.org>", "'<ann@x.org>'"),
        ("a@", "'a@'"),
        ("=?utf-8?q?ab?=@x.org", "'=?utf-8?q?ab?=@x.org'"),
        # These three passed before and were mailed to the null address '<>'.
        ("good@x.org a@b..c", "'a@b..c'"),
        ("a@b.", "'a@b.'"),
        ("a@.b", "'a@.b'"),
    ],
)
def test_a_mailaddress_that_is_no_address_is_refused_at_submission(
    sup: ReferenceSupervisor, mailaddress: str, named: str
) -> None:
    # The mail would refuse it when the job ends; the submitter learns of it now.
    with pytest.raises(SubmitError) as refused:
        sup.submit([{"name": "j"}, {"name": "k", "user": "bob", "mailaddress": mailaddress}])
    assert str(refused.value) == (
        f"job 2 of the submission: mailaddress {mailaddress!r}: {named} is not a mail "
        "address (expected name@domain or a bare user name, with no empty part between dots, "
        "separated by ',', ';' or spaces)"
    )
    assert sup.job_ids() == []


@pytest.mark.parametrize(
    "mailaddress", ["", "lead@studio.example", "a.b+c@x.org, bob;carol  dave@y.org", " , "]
)
def test_a_mailaddress_a_site_uses_is_accepted(sup: ReferenceSupervisor, mailaddress: str) -> None:
    (job,) = sup.submit([{"name": "j", "user": "bob", "mailaddress": mailaddress}])
    assert job["mailaddress"] == mailaddress


@pytest.mark.parametrize("user", ["  ", " bob", "bob\n", "bo\tb"])
def test_a_blank_or_padded_user_is_refused(sup: ReferenceSupervisor, user: str) -> None:
    with pytest.raises(SubmitError, match="is not a user name"):
        sup.submit([{"name": "j", "user": user}])


@pytest.mark.parametrize("job", [{"name": "j"}, {"name": "j", "user": ""}])
def test_a_job_without_a_user_is_user_qube(sup: ReferenceSupervisor, job: dict[str, str]) -> None:
    (submitted,) = sup.submit([job])  # as the farm.proto's SubmitJobs says
    assert submitted["user"] == "qube"


def test_a_database_from_before_the_passive_preempt_gets_its_column(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.db"
    old_schema = reference_store._SCHEMA.replace("    preempted INTEGER NOT NULL DEFAULT 0,\n", "")
    assert old_schema != reference_store._SCHEMA
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
    db.close()

    with ReferenceSupervisor(path) as sup:
        job_id = submit_one(sup, agenda=[1, 2])
        sup.start_work(job_id, "1")
        assert sup.job_action("preempt", job_id, "alice").changed == 1
        assert sup.preempted_job_ids() == {job_id}


def test_a_database_from_before_takes_its_qube_n_labels_as_the_supervisors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "supervisor.db"
    column = "    label_assigned INTEGER NOT NULL DEFAULT 0,\n"
    old_schema = reference_store._SCHEMA.replace(column, "")
    assert old_schema != reference_store._SCHEMA
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(old_schema)
        db.executemany(
            "INSERT INTO jobs (id, name, label, pgrp, pid, status, user, priority, prototype,"
            " cpus, mailaddress, timesubmit) VALUES (?, ?, ?, 1, 0, 'pending', 'alice', 9999,"
            " 'cmdline', 1, '', 0)",
            [(1, "a", "qube0"), (2, "b", "qube1x")],
        )

    with ReferenceSupervisor(path) as sup:
        (again,) = sup.submit([{"name": "a", "label": "qube0", "pgrp": 1}])
        assert again["label"] == "qube2"
        with pytest.raises(SubmitError, match="label 'qube1x' is taken by job 2"):
            sup.submit([{"name": "b", "label": "qube1x", "pgrp": 1}])


def test_the_declared_events_are_those_the_state_rules_raise() -> None:
    # Declared with each registration (the trigger engine's never-happens check), so a
    # missing one would warn about a trigger that does fire, and an extra one hide one
    # that never can (the README lists waiting among the events the farm never raises).
    raised = {
        f"{event_name(rule.target)}-{kind}"
        for kind, rules in (("job", JOB_RULES), ("work", WORK_RULES), ("subjob", SUBJOB_RULES))
        for rule in rules.values()
        if rule.target is not None and event_name(rule.target) is not None
    }
    started = {"running-job", "running-work", "running-subjob"}  # a worker takes a frame
    assert raised | started | {"submit-job", "removed-job"} == PUBLISHED_EVENTS
    assert not any(event.startswith("waiting-") for event in PUBLISHED_EVENTS)


def test_the_job_status_rule_reads_which_statuses_the_agenda_holds_by_a_seek_each(
    sup: ReferenceSupervisor,
) -> None:
    """Not every row at every frame's change: a farm completing 5,000 frames took 51 s."""
    (job,) = sup.submit([{"name": "big", "user": "alice", "agenda": [str(n) for n in range(300)]}])
    sup.work_action("block", job["id"], ["7", "9"], "alice")
    sup.work_action("kill", job["id"], ["8"], "alice")
    assert sup._agenda_statuses(job["id"]) == ["blocked", "killed", "pending"]
    assert sup._agenda_statuses(job["id"] + 1) == []  # no such job: nothing held
    steps: list[str] = []
    sup._db.set_trace_callback(steps.append)
    try:
        sup._agenda_statuses(job["id"])
    finally:
        sup._db.set_trace_callback(None)
    (query,) = steps
    plan = " ".join(row[3] for row in sup._db.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert "work_by_status" in plan and "SCAN work" not in plan, plan


def test_a_database_from_before_keeps_its_items_in_agenda_order_by_status(tmp_path: Path) -> None:
    # work_by_status gained the position (a worker's next frame is a seek in it): an
    # older database's index is made again at its open.
    path = tmp_path / "supervisor.db"
    ReferenceSupervisor(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "DROP INDEX work_by_status; CREATE INDEX work_by_status ON work (job_id, status);"
        )
    with ReferenceSupervisor(path) as store:
        (job,) = store.submit([{"name": "j", "agenda": ["b", "a", "c"]}])
        assert store.next_pending(job["id"]) == ("b", 0)
        columns = [row[2] for row in store._db.execute("PRAGMA index_info(work_by_status)")]
    assert columns == ["job_id", "status", "position"]


# -- probe 127 findings 3 and 5 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("jobs", "refusal"),
    [
        (
            [{"name": "sd", "label": "sd", "agenda": ["1"], "dependency": "link-complete-job-sd"}],
            "job 1 of the submission: dependency item 'link-complete-job-sd': 'sd' is this "
            "job's own label (a job cannot wait for itself)",
        ),
        (
            [{"name": "sd", "label": "sd", "agenda": ["1"], "dependency": "done-work-sd"}],
            "job 1 of the submission: dependency item 'done-work-sd': 'sd' is this "
            "job's own label (a job cannot wait for itself)",
        ),
        (  # the label the farm gives it, predicted
            [{"name": "a"}, {"name": "b", "dependency": "link-complete-job-qube1"}],
            "job 2 of the submission: dependency item 'link-complete-job-qube1': 'qube1' is "
            "this job's own label (a job cannot wait for itself)",
        ),
        (  # its own id, predicted
            [{"name": "a"}, {"name": "b", "waitfor": 3}],
            "job 2 of the submission: dependency item 'link-done-job-3': 3 is this job's own "
            "id (a job cannot wait for itself)",
        ),
    ],
    ids=["label", "frame-link", "given-label", "id"],
)
def test_a_dependency_naming_the_job_itself_is_refused(
    sup: ReferenceSupervisor, jobs: list[dict[str, Any]], refusal: str
) -> None:
    submit_one(sup)  # job 1: the submission's jobs would be 2 and 3
    with pytest.raises(SubmitError) as refused:
        sup.submit(jobs)
    assert str(refused.value) == refusal
    assert sup.job_ids() == [1], "nothing stored"
    # Another job's label in the pgrp is no deadlock: it waits for that job.
    (_, b) = sup.submit(
        [{"name": "a", "label": "a"}, {"name": "b", "label": "b", "dependency": "done-job-a"}]
    )
    assert sup.job(b["id"])["status"] == "blocked"


def test_a_frame_retry_of_an_ended_job_lists_its_cause_before_its_effect(
    sup: ReferenceSupervisor,
) -> None:
    job_id = submit_one(sup, agenda=["1", "2"])
    for name in ("1", "2"):
        sup.start_work(job_id, name)
        sup.fail_work(job_id, name)
    assert sup.job(job_id)["status"] == "failed"

    sup.work_action("retry", job_id, ["1"], "alice")

    assert [line["text"] for line in sup.history(job_id)][-2:] == [
        f"[user] workretry by alice: work {job_id}:1 -> pending",
        "[job] failed -> pending (from its agenda)",
    ]


def test_a_subjob_verb_is_listed_before_the_job_status_it_caused(
    sup: ReferenceSupervisor,
) -> None:
    job_id = submit_one(sup, agenda=["1"])
    sup.start_work(job_id, "1")

    sup.subjob_action("kill", job_id, [0], "alice")

    texts = [line["text"] for line in sup.history(job_id)]
    assert texts[-2].startswith("[user] subjobkill by alice: instance")
    assert texts[-1].startswith("[job] running -> killed")


@pytest.mark.parametrize(
    ("value", "spelled"),
    [(float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")],
)
def test_a_result_whose_ended_at_is_not_finite_is_refused_naming_the_field(
    sup: ReferenceSupervisor, value: float, spelled: str
) -> None:
    job_id = submit_one(sup)
    with pytest.raises(ValueError, match=r"^ended_at: ") as refused:
        sup.report_result("inv", job_id, {"outcome": "OUTCOME_SUCCEEDED", "ended_at": value})
    assert str(refused.value) == (
        f"ended_at: {spelled} is not a time; Unix seconds must be a finite number"
    )
    assert sup.result("inv") is None


def test_a_result_moved_from_a_job_never_given_out_replaces_nothing_of_the_real_one(
    sup: ReferenceSupervisor,
) -> None:
    job_id = submit_one(sup)
    sup.report_result("inv", 777, {"outcome": "OUTCOME_FAILED", "ended_at": 1.0})

    assert (
        sup.report_result("inv", job_id, {"outcome": "OUTCOME_SUCCEEDED", "ended_at": 2.0}) is False
    )

    assert [line["text"] for line in sup.history(job_id)][-1] == (
        "[callback] result of invocation inv: OUTCOME_SUCCEEDED (a later run; first "
        "reported for job 777, a job this supervisor never had)"
    )
    assert [r["invocation_id"] for r in sup.results(job_id)] == ["inv"]


def test_an_older_database_gets_the_jobs_starts_column(tmp_path: Path) -> None:
    path = tmp_path / "sup.db"
    with ReferenceSupervisor(path) as first:
        job_id = submit_one(first)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN starts")  # as a store before it made it
    db.close()
    with ReferenceSupervisor(path) as reopened:
        reopened.start_job(job_id)
        assert reopened.job_starts(job_id) == 1
